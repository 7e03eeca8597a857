"""The front page keeps its promises: every shell command README.md shows in a code
block runs here as shown (or, where it cannot, the reason is listed below and what can
be checked is), and every relative link in README.md and docs/*.md leads to a file
(and heading) that exists.

The commands run in a scratch folder that looks like a clone (``assets/samples``), with
the weights the internet would have given replaced by small generated ones of the
same formats, under the same names, in the same archives.
"""

from __future__ import annotations

import ast
import io
import re
import shlex
import shutil
import subprocess
import sys
import urllib.parse
import zipfile
from pathlib import Path, PurePosixPath

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

#: The front page's first command, the contract with a new user (and .ci/run holds the second).
FIRST_COMMAND = (
    "pip install -r requirements-cpu.txt . && "
    "python -m face_segmentation_pytorch MODEL_PARAMS_DIR=weights IMGS_DIR=assets/samples OUT_DIR=outputs"
)

#: Commands the test does not run, and why. What it checks instead is in the handlers.
NOT_RUN = {
    "pip": "installing is what made the environment these tests run in (.ci/run installs "
    "with exactly the front page's test command); the test checks that every file and "
    "extra the command names exists and that the requirement files parse",
    "pytest": "it is this test suite; .ci/run runs it, and the test checks that .ci/run's "
    "command is the front page's, character for character",
    "curl": "no internet here; the test checks the URL is the one the weights registry "
    "downloads from and puts a stand-in of the same archive (same name, same member "
    "paths, small generated weights of the same format) where curl -O would",
}

#: Commands run for real (`python` is this interpreter).
RUN = ("python -m face_segmentation_pytorch", "unzip")

SHELL_LANGS = {"", "bash", "sh", "shell", "console"}


# --------------------------------------------------------------------------
# Reading the Markdown.


def code_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block."""
    return [
        (m.group(1).strip().lower(), m.group(2))
        for m in re.finditer(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", text, re.M | re.S)
    ]


def shell_commands(body: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped,
    ``a && b`` as two commands."""
    commands = []
    for line in body.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:cut])
            words = words[cut + 1 :]
    return [c for c in commands if c]


def readme_shell_blocks() -> list[list[list[str]]]:
    text = README.read_text()
    return [shell_commands(body) for lang, body in code_blocks(text) if lang in SHELL_LANGS]


def kind(argv: list[str]) -> str | None:
    if argv[:2] == ["pip", "install"]:
        return "pip"
    if argv[:3] == ["python", "-m", "pytest"]:
        return "pytest"
    if argv[0] == "python" and argv[1:2] == ["-m"] and argv[2].split(".")[0] == "face_segmentation_pytorch":
        return "python -m face_segmentation_pytorch"
    if argv[0] in ("curl", "unzip"):
        return argv[0]
    return None


def test_front_page_is_a_front_page():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail to docs/"


def test_every_command_shown_is_run_or_listed_with_a_reason():
    blocks = readme_shell_blocks()
    assert blocks, "no shell code blocks found in README.md"
    unknown = [" ".join(c) for b in blocks for c in b if kind(c) not in (*NOT_RUN, *RUN)]
    assert not unknown, f"README.md shows commands this test neither runs nor lists with a reason: {unknown}"


def test_the_two_commands_are_the_contract():
    text = README.read_text()
    lines = {ln.strip() for lang, body in code_blocks(text) if lang in SHELL_LANGS for ln in body.splitlines()}
    assert FIRST_COMMAND in lines
    tests = [ln for ln in lines if "python -m pytest" in ln]
    assert len(tests) == 1, tests
    ci = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests[0] in ci, ".ci/run must run exactly the front page's test command"


# --------------------------------------------------------------------------
# pip install: files and extras exist, requirement files parse.

#: pip options a requirements file or the command may carry, and whether they take a value.
PIP_OPTIONS = {
    "-r": True,
    "--requirement": True,
    "-c": True,
    "--constraint": True,
    "-e": True,
    "--editable": True,
    "-i": True,
    "--index-url": True,
    "--extra-index-url": True,
    "-f": True,
    "--find-links": True,
    "--pre": False,
    "--prefer-binary": False,
    "--only-binary": True,
    "--no-binary": True,
    "--upgrade": False,
    "-U": False,
}


def _setup_extras() -> set[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: k.value for k in call.keywords}
    return set(ast.literal_eval(kw["extras_require"])) if "extras_require" in kw else set()


def _check_requirement_file(path: Path, seen: set[Path]) -> None:
    from packaging.requirements import Requirement

    assert path.is_file(), f"{path.relative_to(ROOT)} does not exist"
    if path in seen:
        return
    seen.add(path)
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        if not line:
            continue
        where = f"{path.name}:{n}"
        if line.startswith("-"):
            opt, _, value = line.partition(" ")
            opt, eq, inline = opt.partition("=")
            value = inline if eq else value.strip()
            assert opt in PIP_OPTIONS, f"{where}: unknown pip option {opt}"
            assert bool(value) == PIP_OPTIONS[opt], f"{where}: {line}"
            if opt in ("-r", "--requirement", "-c", "--constraint"):
                _check_requirement_file(path.parent / value, seen)
            if opt in ("-i", "--index-url", "--extra-index-url"):
                assert urllib.parse.urlsplit(value).scheme in ("https", "http", "file"), f"{where}: {value}"
            continue
        Requirement(line)  # raises on anything pip would not parse


def _check_pip(argv: list[str]) -> None:
    words = argv[2:]
    seen: set[Path] = set()
    while words:
        w = words.pop(0)
        opt, eq, inline = w.partition("=")
        if opt in PIP_OPTIONS:
            value = (inline if eq else words.pop(0)) if PIP_OPTIONS[opt] else None
            if opt in ("-r", "--requirement", "-c", "--constraint"):
                _check_requirement_file(ROOT / value, seen)
            elif opt in ("-e", "--editable"):
                assert value == "." and (ROOT / "setup.py").is_file(), w
            continue
        assert not w.startswith("-"), f"pip option {w} is not known to this test"
        if w == ".":
            assert (ROOT / "setup.py").is_file()
            continue
        m = re.fullmatch(r"face_segmentation_pytorch\[([a-z0-9_,-]+)\]", w)
        assert m, f"pip install {w}: not a file or extra of this repository"
        assert set(m.group(1).split(",")) <= _setup_extras(), f"{w}: setup.py has no such extra"


def test_install_commands_name_files_and_extras_that_exist():
    pips = [c for b in readme_shell_blocks() for c in b if kind(c) == "pip"]
    assert any("requirements-cpu.txt" in c for c in pips)
    for argv in pips:
        _check_pip(argv)
    # And every requirements file in the repository parses, whether the front page names it or not.
    seen: set[Path] = set()
    for path in sorted(ROOT.glob("requirements*.txt")):
        _check_requirement_file(path, seen)


def test_requirement_parser_catches_a_broken_file(tmp_path):
    bad = tmp_path / "requirements-bad.txt"
    from packaging.requirements import InvalidRequirement

    bad.write_text("torch===2.x ~\n")
    with pytest.raises(InvalidRequirement):
        _check_requirement_file(bad, set())
    bad.write_text("--extra-index-ur https://download.pytorch.org/whl/cpu\n")
    with pytest.raises(AssertionError):
        _check_requirement_file(bad, set())


# --------------------------------------------------------------------------
# Running the commands.


def _make_archive(url: str, reference_prototxt: str, scratch: Path) -> bytes:
    """A small stand-in of the archive the registry publishes at ``url``: the same
    member names, generated weights of the same format and class count."""
    import torch
    from conftest import make_caffe_net

    from face_segmentation_pytorch import WEIGHTS

    entry = next((w for w in WEIGHTS.values() if w.url == url), None)
    assert entry is not None, f"{url} is not a URL the weights registry downloads from"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        if entry.file_format == "caffemodel":
            net = make_caffe_net(scratch / entry.name, reference_prototxt, num_classes=entry.num_classes, seed=3)
            zf.write(net.caffemodel, entry.archive_member)
        elif entry.file_format == "state_dict":
            from face_segmentation_pytorch import load_caffemodel_as_statedict

            net = make_caffe_net(scratch / entry.name, reference_prototxt, num_classes=entry.num_classes, seed=3)
            state = load_caffemodel_as_statedict(str(net.caffemodel))
            raw = io.BytesIO()
            torch.save(state, raw)
            zf.writestr(entry.archive_member, raw.getvalue())
        else:  # a OneFlow checkpoint folder, as the OneFlow work publishes it
            from test_linknet import random_state, write_checkpoint

            folder = write_checkpoint(scratch / entry.name / entry.local_stem, random_state(seed=1))
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    zf.write(p, f"{entry.local_stem}/{p.relative_to(folder).as_posix()}")
    return buf.getvalue()


def _curl(argv: list[str], cwd: Path, reference_prototxt: str, scratch: Path) -> None:
    flags = [a for a in argv[1:] if a.startswith("-")]
    urls = [a for a in argv[1:] if not a.startswith("-")]
    assert len(urls) == 1 and "O" in "".join(flags), f"expected `curl -LO <url>`: {argv}"
    name = PurePosixPath(urllib.parse.urlsplit(urls[0]).path).name
    (cwd / name).write_bytes(_make_archive(urls[0], reference_prototxt, scratch))


def _unzip(argv: list[str], cwd: Path) -> None:
    if shutil.which("unzip"):
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    # No unzip on this machine: the same extraction (-j: no folders, -d: target) in Python.
    words, junk, target = argv[1:], False, "."
    rest = []
    while words:
        w = words.pop(0)
        if w == "-d":
            target = words.pop(0)
        elif w.startswith("-"):
            junk |= "j" in w
        else:
            rest.append(w)
    archive, *members = rest
    with zipfile.ZipFile(cwd / archive) as zf:
        for m in members or zf.namelist():
            out = cwd / target / (PurePosixPath(m).name if junk else m)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(zf.read(m))


def _keys(argv: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in argv[3:] if re.match(r"[A-Z_0-9]+=", a))


def _run_python(argv: list[str], cwd: Path) -> None:
    from face_segmentation_pytorch import WEIGHTS

    proc = subprocess.run(
        [sys.executable, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    shown = " ".join(argv)
    assert proc.returncode == 0, f"{shown}\n{proc.stderr}"
    module = argv[2]
    if module == "face_segmentation_pytorch":
        keys = _keys(argv)
        out = cwd / keys.get("OUT_DIR", keys["IMGS_DIR"])
        for image in sorted((cwd / keys["IMGS_DIR"]).iterdir()):
            assert (out / f"{image.stem}__heatmap.png").is_file() or (out / f"{image.name}__heatmap.png").is_file(), (
                f"{shown}: no heatmap for {image.name}"
            )
    elif module == "face_segmentation_pytorch.convert":
        positional = [a for a in argv[3:] if not a.startswith("-") and "=" not in a]
        target = cwd / _keys(argv).get("OUT", positional[-1] if positional else "")
        assert target.is_file(), f"{shown}: {target} not written"
        # A name the registry looks for in that folder, so the next command finds it.
        looked_for = {p.name for w in WEIGHTS.values() for p in w.local_candidates(target.parent)}
        assert target.name in looked_for, f"{shown}: no weights entry looks for {target.name}"


@pytest.fixture()
def clone(tmp_path) -> Path:
    """A scratch folder holding what the commands read from a clone."""
    folder = tmp_path / "clone"
    (folder / "assets").mkdir(parents=True)
    shutil.copytree(ROOT / "assets" / "samples", folder / "assets" / "samples")
    return folder


def test_every_command_shown_runs(clone, tmp_path, slim_weights_dir, reference_prototxt):
    """The install block runs on a clone whose weights/ already holds (slim) weights,
    since it would download them; the other blocks run in order in one clone
    without weights, as a reader following the no-internet recipe would."""
    blocks = readme_shell_blocks()
    kinds = [{kind(c) for c in b} for b in blocks]
    first = next(i for i, k in enumerate(kinds) if "pip" in k and "pytest" not in k)
    install = tmp_path / "install"
    shutil.copytree(clone, install)
    (install / "weights").mkdir()
    shutil.copy(slim_weights_dir / "face_seg_fcn8s.pt", install / "weights")
    scratch = tmp_path / "archives"
    ran = []
    for i, block in enumerate(blocks):
        cwd = install if i == first else clone
        for argv in block:
            k = kind(argv)
            if k == "pip":
                _check_pip(argv)
            elif k == "pytest":
                continue  # test_the_two_commands_are_the_contract
            elif k == "curl":
                _curl(argv, cwd, reference_prototxt, scratch)
            elif k == "unzip":
                _unzip(argv, cwd)
                ran.append(argv)
            elif k == "python -m face_segmentation_pytorch":
                _run_python(argv, cwd)
                ran.append(argv)
    assert (install / "outputs" / "astronaut__heatmap.png").is_file()  # as the front page says
    assert ran, "no command of the front page ran"


def test_unzip_puts_the_caffemodel_where_the_registry_looks(clone, reference_prototxt, tmp_path):
    """The recipe's unzip line names the registry's archive member and the name looked for."""
    from face_segmentation_pytorch import WEIGHTS

    lines = [c for b in readme_shell_blocks() for c in b if kind(c) == "unzip"]
    for argv in lines:
        archive = next(a for a in argv[1:] if a.endswith(".zip"))
        entry = next(
            w
            for w in WEIGHTS.values()
            if PurePosixPath(urllib.parse.urlsplit(w.url).path).name == archive and w.archive_member in argv
        )
        (clone / archive).write_bytes(_make_archive(entry.url, reference_prototxt, tmp_path / "a"))
        _unzip(argv, clone)
        target = clone / argv[argv.index("-d") + 1]
        assert any(p.is_file() for p in entry.local_candidates(target)), f"{argv}: nothing where {entry.name} looks"


def test_console_scripts_named_on_the_front_page_are_declared():
    text = README.read_text()
    named = set(re.findall(r"`(face-segmentation(?:-[a-z]+)?)`", text))
    assert "face-segmentation" in named
    declared = set(re.findall(r"[\"'](face-segmentation[a-z-]*)\s*=", (ROOT / "setup.py").read_text()))
    assert named <= declared, f"setup.py's console_scripts lack {sorted(named - declared)}"


def test_weights_page_urls_are_the_ones_the_code_downloads():
    """Every URL of docs/weights.md's no-internet table is one the package downloads from."""
    from face_segmentation_pytorch import WEIGHTS

    text = (DOCS / "weights.md").read_text()
    section = text.split("## No internet", 1)[1].split("\n## ", 1)[0]
    urls = re.findall(r"<(https?://[^>]+)>", section)
    assert len(urls) >= len({w.url for w in WEIGHTS.values()})
    source = "\n".join(p.read_text() for p in (ROOT / "face_segmentation_pytorch").rglob("*.py"))
    registry = {w.url for w in WEIGHTS.values()}
    for url in urls:
        assert url in registry or url in source, f"docs/weights.md names {url}, which the package does not use"
    assert registry <= set(urls), f"docs/weights.md lacks {sorted(registry - set(urls))}"


# --------------------------------------------------------------------------
# Links.


def github_slug(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def _without_fences(text: str) -> str:
    return re.sub(r"^```[^\n]*\n.*?^```[ \t]*$", "", text, flags=re.M | re.S)


def _without_code(text: str) -> str:
    return re.sub(r"`[^`\n]*`", "", _without_fences(text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the page's headings (code spans keep their text)."""
    seen: dict[str, int] = {}
    found = set()
    text = _without_fences(path.read_text()).replace("`", "")
    for m in re.finditer(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", text, re.M):
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def relative_links(path: Path) -> list[str]:
    text = _without_code(path.read_text())
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_slugs_follow_github():
    assert github_slug("Many machines and GPUs: `ENGINE=ray`".replace("`", "")) == "many-machines-and-gpus-engineray"
    assert github_slug("Keeping a GPU fed: PIPELINE=processes") == "keeping-a-gpu-fed-pipelineprocesses"
    assert github_slug("No internet: weights by hand") == "no-internet-weights-by-hand"


PAGES = [README, *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_relative_links_lead_to_files_and_headings(page):
    broken = []
    for link in relative_links(page):
        target, _, anchor = link.partition("#")
        dest = (page.parent / urllib.parse.unquote(target)).resolve() if target else page
        if not dest.exists():
            broken.append(f"{link} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{link} (no heading #{anchor} in {dest.name})")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_docs_folder_has_the_pages_the_front_page_links():
    linked = {t.partition("#")[0] for t in relative_links(README) if t.startswith("docs/")}
    assert {"docs/keys.md", "docs/video.md", "docs/label.md", "docs/training.md", "docs/weights.md"} <= linked
