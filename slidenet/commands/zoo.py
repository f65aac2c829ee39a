"""`slidenet zoo [NAME]`: the classic CNNs of `slidenet.notation.zoo`, listed, or one as its pattern."""
from slidenet.notation import zoo
from slidenet.notation.pattern import parse
from slidenet.notation.shapes import infer, walk_infos


def register(subparsers):
    p = subparsers.add_parser(
        "zoo", help="the classic CNNs (LeNet-5 to DenseNet) as patterns",
        description="Without NAME: every net of the zoo with its year, authors, parameters and "
                    "multiply-adds. With NAME: its pattern on one line, for --pattern or "
                    "`slidenet summary`; zoo:NAME works wherever a pattern is accepted.")
    p.add_argument("name", nargs="?", help="a net of the zoo, e.g. resnet18 (default: list them)")
    p.set_defaults(func=run)


def run(args):
    if args.name:
        print(zoo.lookup(args.name).pattern)
        return 0
    rows = [("name", "net", "year", "input", "parameters", "multiply-adds", "idea")]
    for entry in zoo.ENTRIES:
        infos = list(walk_infos(infer(parse(entry.pattern), entry.pattern)))
        shape = "x".join(map(str, infos[0].output_shape))
        rows.append((entry.name, entry.title, str(entry.year), shape,
                     f"{sum(i.params for i in infos):,}",
                     f"{sum(i.madds for i in infos) / 1e9:.2f} G", entry.idea))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    right = {4, 5}
    for row in rows:
        cells = [cell.rjust(w) if i in right else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths))]
        print("  ".join(cells + [row[-1]]).rstrip())
    print("\nslidenet zoo NAME prints its pattern; slidenet summary zoo:NAME explains it layer by "
          "layer (docs/zoo.md)")
    return 0
