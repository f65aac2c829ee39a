"""The layers an ONNX graph was read into, written as slidenet's nested branches.

The importer reads each node that computes something into a `Piece` that records which
pieces' outputs it reads (`Piece.reads`: one source, or several for a merge; None is the
graph's input). Those edges form a graph of layers. slidenet writes graphs of one shape only,
series-parallel ones:

    ... -> A -> { B -> C | ID | D } -> ADD -> E ...

a value read by several layers starts `{`, each branch is a chain (which may branch again
inside) from that value, and all of them end at the same merge, ADD or CONCAT, in the order
the merge reads them. A branch that is the value itself is `ID`. This module finds that form
(`nest`), or names the merge that breaks it (`NotNested`), and writes it (`text`) and lists
the pieces in the order of `Net.every_layer()` (`in_order`: each branch's layers before their
merge), which is how the importer copies the weights.

Items: a piece index, or a group `(branches, merge)` where each branch is a list of items
(empty for ID) and merge is the merge piece's index.
"""
from collections import Counter, defaultdict

INPUT = None        # the source of a value read straight from the graph's input


class NotNested(Exception):
    """The layers do not form nested branches; the message names the node at fault."""


def nest(pieces, final):
    """Items from the input to piece `final` (the scores), or NotNested.

    pieces: the importer's `Piece`s in graph order (every piece after the pieces it reads).
    """
    consumers = defaultdict(list)
    for index, piece in enumerate(pieces):
        for source in piece.reads:
            consumers[source].append(index)

    def merges(index):
        return len(pieces[index].reads) > 1

    def follow(current, items):
        """Extend `items` along the chain after `current`, through any branches that start on
        it, until the graph ends or a merge that other branches join too:
        (items, the last piece, that merge or None)."""
        while True:
            after = consumers.get(current, [])
            if not after:
                return items, current, None
            if len(after) == 1:
                if merges(after[0]):
                    return items, current, after[0]
                current = after[0]
                items.append(current)
                continue
            group, current = fork(current, after)
            items.extend(group)

    def fork(start, after):
        """The branches that start on `start` (read by the pieces `after`), joined: (items,
        the merge that joins the last of them)."""
        branches = [([], start, index) if merges(index) else follow(index, [index])
                    for index in after]
        items = []
        while True:
            for merge in dict.fromkeys(m for _, _, m in branches if m is not None):
                mine = [b for b in branches if b[2] == merge]
                reads = pieces[merge].reads
                if Counter(reads) != Counter(end for _, end, _ in mine):
                    continue
                ordered = []
                for source in reads:        # the merge's input order: CONCAT's channels
                    branch = next(b for b in mine if b[1] == source)
                    mine.remove(branch)
                    ordered.append(branch[0])
                group = (ordered, merge)
                rest = [b for b in branches if b[2] != merge]
                if not rest:
                    return items + [group], merge
                # Joined, these branches are one branch of the others that start on `start`.
                branches = rest + [follow(merge, [group])]
                break
            else:
                raise NotNested(_why(pieces, branches, start))

    items, last, merge = follow(INPUT, [])
    if merge is not None:
        raise NotNested(f"{pieces[merge].node} joins a value with others that do not branch "
                        "from one value before it, so the graph is not branches "
                        "{ A | B } -> ADD (or CONCAT) nested in one chain")
    if last != final:
        raise NotNested(f"{pieces[last].node} is computed but never reaches the net's output")
    return items


def _why(pieces, branches, start):
    """The fault of branches that no merge joins: a dangling branch, or a merge that reads
    values from outside the branches (a graph that is not series-parallel)."""
    dangling = [b for b in branches if b[2] is None]
    if dangling:
        items, end, _ = dangling[0]
        return (f"{pieces[end].node} ends a branch that never joins the others (it reaches "
                "the output without a merge, or is never used)")
    merge = branches[0][2]
    origin = "the graph's input" if start is INPUT else pieces[start].node
    return (f"{pieces[merge].node} joins branches that do not all start from one value (of the "
            f"branches from {origin}, some reach it and others other merges): the graph is not "
            "branches { A | B } -> ADD (or CONCAT) nested in one chain")


def text(items, pieces):
    """The pattern of `items`: "A -> { B | ID } -> ADD -> C", with runs of the same layers
    written once with their count, as the lecture does: "[{ B | ID } -> ADD -> RELU]*2"."""
    return written(items, pieces)[0]


def written(items, pieces, tree=None, column=0):
    """(`text(items, pieces)`, and with a `pattern.Tree`, the items `parse` reads from that
    text where it starts at `column` of the whole pattern, else None): the pattern and its
    parse, made in one pass."""
    return _chain([_item(item, pieces) for item in items], tree, column)


ARROW = " -> "
RUN = 8     # the longest stretch of layers `_runs` looks for repeats of


def _runs(texts):
    """(start, length, count) for each stretch of `texts`, each that repeats to be written once
    as "[A -> B]*k": at each place, the repeat that covers the most layers. The pattern expands
    back to the same layers in the same order (and so the same names)."""
    i = 0
    while i < len(texts):
        best = (1, 1)
        for length in range(1, min(RUN, (len(texts) - i) // 2) + 1):
            count = 1
            while texts[i + count * length:i + (count + 1) * length] == texts[i:i + length]:
                count += 1
            if count > 1 and length * count > best[0] * best[1]:
                best = (length, count)
        length, count = best
        yield i, length, count
        i += length * count


# An item as written: (its text, make) where make(tree, column) is its parsed pattern item
# when the text starts at `column`.

def _chain(parts, tree, column):
    """Parts joined by " -> ", repeats as "[...]*k": (text, [pattern items] or None)."""
    written, items, at = [], [] if tree is not None else None, column
    for start, length, count in _runs([text for text, _ in parts]):
        if count > 1:
            inner, inner_items = _join(parts[start:start + length], tree, at + 1)
            text = f"[{inner}]*{count}"
            if tree is not None:
                items.append(tree.group(inner_items, count, at))
        else:
            text, make = parts[start]
            if tree is not None:
                items.append(make(tree, at))
        written.append(text)
        at += len(text) + len(ARROW)
    return ARROW.join(written), items


def _join(parts, tree, column):
    """Parts joined by " -> " as they are (a repeated stretch's inside): (text, items)."""
    items, at = [] if tree is not None else None, column
    for text, make in parts:
        if tree is not None:
            items.append(make(tree, at))
        at += len(text) + len(ARROW)
    return ARROW.join(text for text, _ in parts), items


def _item(item, pieces):
    """One item of `nest` as written: (text, make)."""
    if not isinstance(item, tuple):
        text = pieces[item].text
        return text, lambda tree, column: tree.layer(text, column)
    branches, merge = item
    chains = [[_item(inner, pieces) for inner in branch] if branch else
              [("ID", lambda tree, column: tree.layer("ID", column))] for branch in branches]
    texts = [_chain(chain, None, 0)[0] for chain in chains]
    merge_text = pieces[merge].text
    text = f"{{ {' | '.join(texts)} }}{ARROW}{merge_text}"

    def make(tree, column):
        made, at = [], column + 2
        for chain, written_text in zip(chains, texts):
            made.append(_chain(chain, tree, at)[1])
            at += len(written_text) + 3
        return tree.merge(merge_text, column + len(text) - len(merge_text), made, column)
    return text, make


def in_order(items, pieces):
    """The pieces of `items` in `Net.every_layer()` order, None for an ID branch (it has no
    ONNX node, nor arrays, of its own)."""
    for item in items:
        if isinstance(item, tuple):
            branches, merge = item
            for branch in branches:
                if branch:
                    yield from in_order(branch, pieces)
                else:
                    yield None
            yield pieces[merge]
        else:
            yield pieces[item]
