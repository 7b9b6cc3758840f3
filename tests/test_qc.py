"""The subject report and the group index: well-formed self-contained HTML with every section,
warnings from the automatic checks, atomic writes, and a rendering in headless Chromium."""

import base64
import html
import html.parser
import re
import shutil
import subprocess

import numpy as np
import pytest

from metaqsm.pipeline import PipelineResult
from metaqsm.qc import subject_report_from_result, write_group_index, write_subject_report

SHAPE = (28, 32, 24)
VSZ = 4.0  # mm: a whole head in a small matrix


def _subject(eroded_fraction=None):
    """A small synthetic subject on an LPS grid: an ellipsoidal brain in a head, fields and chi."""
    affine = np.diag([-VSZ, -VSZ, VSZ, 1.0])
    affine[:3, 3] = [60.0, 70.0, -40.0]
    ijk = np.indices(SHAPE).astype(np.float32)
    c = (np.array(SHAPE) - 1) / 2
    r = np.sqrt(sum(((ijk[a] - c[a]) / (0.45 * SHAPE[a])) ** 2 for a in range(3)))
    head, mask = r <= 1.25, r <= 1.0
    eroded = r <= (0.88 if eroded_fraction is None else eroded_fraction ** (1 / 3))
    rng = np.random.default_rng(0)
    magnitude = np.stack([np.where(head, 1.0 - 0.2 * r, 0.0) * np.exp(-e / 3)
                          for e in range(4)], -1) + 0.01 * rng.random(SHAPE + (4,))
    chi = np.where(eroded, 0.05 * np.sin(ijk[0] / 3) + 0.02 * rng.standard_normal(SHAPE), 0.0)
    local = np.where(eroded, 0.02 * np.cos(ijk[1] / 4), 0.0)
    total = np.where(mask, 0.5 * (ijk[2] - c[2]) / SHAPE[2] + local, 0.0)
    return {"magnitude": magnitude.astype(np.float32), "mask": mask, "eroded_mask": eroded,
            "total_field": total.astype(np.float32), "local_field": local.astype(np.float32),
            "chi": chi.astype(np.float32), "affine": affine}


PARAMETERS = {"mask": {"method": "brain_mask"}, "fit-echoes": {"method": "nonlinear",
              "unwrap": "romeo"}, "bgremove": {"method": "resharp", "radius": 6.0},
              "inversion": {"method": "ilsqr"}}
TIMINGS = {"mask": 0.5, "fit-echoes": 2.0, "bgremove": 1.0, "inversion": 3.25}
SECTIONS = ("orientation", "warnings", "summary", "magnitude", "mask", "total-field",
            "local-field", "chi", "r2star", "swi", "parameters", "timings")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    subject = _subject()
    path = tmp_path_factory.mktemp("qc") / "sub-01_ses-1_report.html"
    r2star = np.where(subject["mask"], 20.0 + 10 * subject["chi"], 0.0)
    summary = write_subject_report(path, **subject, r2star=r2star, swi=subject["magnitude"][..., 0],
                                   parameters=PARAMETERS, timings=TIMINGS,
                                   warnings=["phase converted from Siemens units to radians"],
                                   title="sub-01 ses-1")
    return path, summary


class _Checker(html.parser.HTMLParser):
    """Collects ids, image sources and links, and checks every element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.ids, self.imgs, self.links, self.scripts = [], [], [], [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if tag == "img":
            self.imgs.append(a.get("src", ""))
        if tag == "a":
            self.links.append(a.get("href", ""))
        if tag in ("script", "link"):
            self.scripts.append(a)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def _parse(text):
    p = _Checker()
    p.feed(text)
    p.close()
    assert text.startswith("<!DOCTYPE html>")
    assert not p.errors and not p.stack, (p.errors, p.stack)
    assert len(p.ids) == len(set(p.ids)), "duplicate ids"
    return p


def _png_size(data):
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_report_is_well_formed_self_contained_and_has_every_section(report):
    path, summary = report
    text = path.read_text(encoding="utf-8")
    p = _parse(text)
    for section in SECTIONS:
        assert section in p.ids, section
    # no external assets: every picture is an embedded PNG, no script or style sheet is loaded
    assert len(p.imgs) == 7  # magnitude, mask, total, local, chi, R2*, SWI
    for src in p.imgs:
        assert src.startswith("data:image/png;base64,")
        w, h = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert (w, h) == (1210, 440)
    assert all(s.get("type") == "application/json" and "src" not in s for s in p.scripts)
    assert not re.search(r"(src|href)=\"(?!data:)", text)
    # units and orientation on the page, the caller's warning in the warnings box
    for words in ("radiological convention", "patient's right on the viewer's left",
                  "phase converted from Siemens units to radians", "ilsqr", "resharp",
                  "Total field (ppm)", "Susceptibility (ppm)", "R2* (1/s)", "voxel size (mm)"):
        assert words in html.unescape(text), words
    warn = text[text.index('id="warnings"'):text.index('id="summary"')]
    assert 'class="warnings"' in warn and "Siemens" in warn
    timings = text[text.index('id="timings"'):]
    assert "6.75" in timings  # the total
    assert summary["status"] == "warnings" and summary["report"] == path
    assert summary["numbers"]["mask (mL)"] == pytest.approx(
        _subject()["mask"].sum() * VSZ ** 3 / 1000)


def test_automatic_checks_mask_loss_phase_units_and_bad_values(tmp_path):
    subject = _subject(eroded_fraction=0.3)
    subject["total_field"] = subject["total_field"] * 1000  # as from phase in the wrong unit
    subject["local_field"] = subject["local_field"].copy()
    subject["local_field"][3, 3, 3] = np.nan
    out = write_subject_report(tmp_path / "r.html", **subject)
    text = " ".join(out["warnings"])
    assert "mask loss" in text and "phase units?" in text and "NaN or infinite" in text
    page = (tmp_path / "r.html").read_text()
    warn = page[page.index('id="warnings"'):page.index('id="summary"')]
    assert "mask loss" in warn and "phase units?" in warn
    # a good subject raises none
    out = write_subject_report(tmp_path / "ok.html", **_subject())
    assert out["status"] == "ok" and out["warnings"] == []
    assert 'class="nowarnings"' in (tmp_path / "ok.html").read_text()
    # no inversion: said in the page and as a warning
    out = write_subject_report(tmp_path / "nochi.html", **{**_subject(), "chi": None})
    assert "inversion was skipped" in (tmp_path / "nochi.html").read_text()
    assert any("no susceptibility map" in w for w in out["warnings"])


def test_report_refuses_to_overwrite_and_is_atomic(tmp_path, report, monkeypatch):
    path = tmp_path / "r.html"
    path.write_text("old")
    with pytest.raises(FileExistsError, match="exists; use --force"):
        write_subject_report(path, **_subject())
    assert path.read_text() == "old"
    import metaqsm.figures

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(metaqsm.figures, "plot_orthogonal", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_subject_report(path, **_subject(), force=True)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    monkeypatch.undo()
    write_subject_report(path, **_subject(), force=True)
    assert path.read_text().startswith("<!DOCTYPE html>")


def test_report_errors_name_the_argument(tmp_path):
    bad = _subject()
    bad["chi"] = bad["chi"][:-1]
    with pytest.raises(ValueError, match=r"chi must have the shape of the mask \(28, 32, 24\)"):
        write_subject_report(tmp_path / "x.html", **bad)
    with pytest.raises(ValueError, match="affine must be a 4x4 matrix"):
        write_subject_report(tmp_path / "x.html", **{**_subject(), "affine": np.eye(3)})
    assert not list(tmp_path.iterdir())


def test_report_from_a_pipeline_result(tmp_path):
    s = _subject()
    res = PipelineResult(chi=s["chi"], local_field=s["local_field"], total_field=s["total_field"],
                         noise=np.zeros(SHAPE, np.float32), phase_offset=np.zeros(SHAPE, np.float32),
                         mask=s["mask"], eroded_mask=s["eroded_mask"], voxel_size=np.full(3, VSZ),
                         b0_dir=np.array([0, 0, 1.0]), affine=s["affine"],
                         echo_times=np.array([0.004, 0.008, 0.012, 0.016]), field_strength=3.0,
                         parameters=PARAMETERS, timings=TIMINGS)
    out = subject_report_from_result(tmp_path / "sub-02.html", res, magnitude=s["magnitude"],
                                     title="sub-02")
    assert out["status"] == "ok" and out["numbers"]["total time (s)"] == pytest.approx(6.75)
    text = (tmp_path / "sub-02.html").read_text()
    p = _parse(text)
    assert {"magnitude", "mask", "total-field", "local-field", "chi"} <= set(p.ids)
    assert "r2star" not in p.ids and "swi" not in p.ids
    assert "field strength (T)" in text and "[0.004, 0.008, 0.012, 0.016]" in text
    # the warnings the pipeline's stages recorded come first (when results carry them)
    res.warnings = ["bgremove: radius reduced to 5.4 mm"]
    out = subject_report_from_result(tmp_path / "sub-03.html", res, magnitude=s["magnitude"],
                                     warnings=["echo times from the sidecar"])
    assert out["warnings"][:2] == ["bgremove: radius reduced to 5.4 mm",
                                   "echo times from the sidecar"]


def test_group_index(tmp_path, report):
    path, summary = report
    index = tmp_path / "index.html"
    write_group_index(index, [
        {"subject": "02", "session": "1", "status": "failed", "error": "no phase <found>"},
        {**summary, "subject": "01", "session": "1"},
        {"subject": "01", "session": "2", "report": str(path)},  # numbers read from the report
    ])
    text = index.read_text()
    p = _parse(text)
    assert "subjects" in p.ids
    rows = re.findall(r"<tr>(.*?)</tr>", text)
    assert len(rows) == 4  # header and three subjects, sorted by subject and session
    assert [re.findall(r"<td[^>]*>(.*?)</td>", r)[:2] for r in rows[1:]] == \
        [["01", "1"], ["01", "2"], ["02", "1"]]
    assert len(p.links) == 2 and all(not link.startswith("/") for link in p.links)
    assert (index.parent / p.links[0]).resolve() == path.resolve()
    assert "no phase &lt;found&gt;" in text and "status-failed" in text
    assert "mask (mL)" in text and text.count("Siemens") == 2
    assert "3: 1 failed, 2 warnings" in text
    with pytest.raises(FileExistsError, match="exists"):
        write_group_index(index, [])
    with pytest.raises(ValueError, match=r"subjects\[0\] must be a dict with a 'subject'"):
        write_group_index(tmp_path / "i2.html", [{"session": "1"}])


# ----------------------------------------------------------------------------- Chromium
def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        exe = shutil.which(name)
        if exe:
            return exe
    return None


def _render(exe, page, png, tmp_path, size=(1300, 4800)):
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--window-size={size[0]},{size[1]}", f"--screenshot={png}", page.as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=180, check=False)
    assert png.is_file(), "Chromium wrote no screenshot"
    from PIL import Image

    return np.asarray(Image.open(png).convert("RGB")).astype(int)


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (Debian: apt-get install "
                                                  "chromium): the report is not rendered")
def test_report_renders_in_headless_chromium(report, tmp_path):
    pytest.importorskip("PIL", reason="Pillow is needed to read the screenshot")
    exe = _chromium()
    path, _ = report
    # the DOM Chromium builds has every section
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          path.as_uri()], capture_output=True, text=True, timeout=180).stdout
    for section in SECTIONS:
        assert f'id="{section}"' in dom, section
    img = _render(exe, path, tmp_path / "report.png", tmp_path)
    assert img.shape == (4800, 1300, 3)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    grey = (np.abs(r - g) < 8) & (np.abs(g - b) < 8)
    page_bg = (np.abs(img - 244) < 3).all(-1)  # the page's background #f4f4f4
    content = ~page_bg & ~(img > 250).all(-1)
    assert content.mean() > 0.3, "the page is mostly blank"
    # the pictures: black canvases with grey-scale anatomy, a red mask outline, red and blue
    # field maps, and the warnings box's red border
    assert ((img < 10).all(-1)).mean() > 0.15, "no black picture canvas"
    assert (grey & (r > 60) & (r < 200)).sum() > 20000, "no grey-scale anatomy"
    assert ((r > 200) & (g < 80) & (b < 80)).sum() > 500, "no red (mask outline, field)"
    assert ((b > 120) & (r < 80)).sum() > 500, "no blue (field maps)"
    assert ((np.abs(r - 198) < 6) & (np.abs(g - 40) < 6) & (np.abs(b - 40) < 6)).sum() > 300, \
        "no red warnings box"
    # the group index renders too
    index = tmp_path / "index.html"
    write_group_index(index, [{"subject": "01", "report": str(path)}])
    small = _render(exe, index, tmp_path / "index.png", tmp_path, size=(1000, 400))
    assert small.shape == (400, 1000, 3) and (small < 100).all(-1).mean() > 0.01

