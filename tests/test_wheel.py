"""The wheel works on its own: `pip wheel` builds it, it installs into a clean virtual
environment with no extras, and `slidenet train` runs there offline in an empty folder.

This runs in `make test`, as CI's smoke test of the wheel: the build and the clean install
take setuptools, NumPy, tqdm and threadpoolctl from pip's cache or the package registry, as
`make setup` does; the training itself reaches nothing outside the machine.
"""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Any network use would go to a port where nothing listens (training is offline by design).
OFFLINE = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
           "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def check(command, **kw):
    done = subprocess.run(command, capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """`pip wheel . -w dist` on a copy of the sources (the build writes build/ and egg-info
    beside them, which must not touch the checkout other tests run from)."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (source / name).write_bytes((ROOT / name).read_bytes())
    check(["cp", "-r", str(ROOT / "slidenet"), str(source / "slidenet")])
    for cache in source.rglob("__pycache__"):
        check(["rm", "-rf", str(cache)])
    check([sys.executable, "-m", "pip", "wheel", str(source), "-w", str(work / "dist"),
           "--no-deps", "-q"])
    (built,) = (work / "dist").glob("slidenet-*.whl")
    return built


def test_the_wheel_holds_the_package_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "slidenet/data/mnist5k.npz" in names
    assert "slidenet/serve/templates/report.html" in names
    shipped = sum(zipfile.ZipFile(wheel).getinfo(n).file_size for n in names)
    assert wheel.stat().st_size < 3_000_000 and shipped < 5_000_000
    assert not any(n.startswith("tests/") for n in names)


def test_the_wheel_trains_offline_in_a_clean_environment(wheel, tmp_path):
    venv = tmp_path / "venv"
    check([sys.executable, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip"]
    check(pip + ["install", "-q", str(wheel)])
    # Nothing but the package and its three dependencies: no extras, no mlxtend.
    listed = check(pip + ["list", "--format=freeze"]).stdout.lower()
    for absent in ("matplotlib", "pillow", "numba", "onnx", "mlxtend", "starlette"):
        assert f"{absent}==" not in listed, absent
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | OFFLINE
    slidenet = str(venv / "bin" / "slidenet")
    trained = check([slidenet, "train", "--epochs", "1"], cwd=empty, env=env)
    assert "mnist5k: 3,600 training, 400 validation and 1,000 test images" in trained.stdout
    assert (empty / "runs" / "latest" / "model.npz").is_file()
    evaluated = check([slidenet, "eval", "runs/latest/model.npz"], cwd=empty, env=env)
    assert "accuracy" in evaluated.stdout
    # A picture needs the viz extra: one clear line and exit 2, not a traceback.
    picture = subprocess.run([slidenet, "viz", "filters", "runs/latest/model.npz", "--out", "f.png"],
                             cwd=empty, env=env, capture_output=True, text=True)
    assert picture.returncode == 2 and "Traceback" not in picture.stderr
    assert "matplotlib" in picture.stderr
    # From Python too, with the packaged digits.
    fitted = check([str(venv / "bin" / "python"), "-c",
                    "import slidenet, slidenet.data as d; ds = d.load('mnist5k'); "
                    "m = slidenet.fit('INPUT(28x28x1) -> CONV(4) -> RELU -> POOL -> FC(10)', "
                    "ds.x_train[:200], ds.y_train[:200], epochs=1, verbose=False); "
                    "print(len(m.history))"], cwd=empty, env=env)
    assert fitted.stdout.strip() == "1"


def test_all_is_every_extra():
    # `pip install 'slidenet[all]'` installs what `make setup` installs (-e '.[all]').
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in Python 3.11 and later")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    union = {req for name, reqs in extras.items() if name != "all" for req in reqs}
    assert set(extras["all"]) == union
    # `make setup` is the $(STAMP) recipe: its lines, up to the next blank line.
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(STAMP): pyproject.toml Makefile\n", 1)[1].split("\n\n", 1)[0]
    installs = [line.strip() for line in recipe.splitlines() if "pip install" in line]
    assert installs == ["$(PY) -m pip install -q --upgrade pip", "$(PY) -m pip install -q -e '.[all]'"]
