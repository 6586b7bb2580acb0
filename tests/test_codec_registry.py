"""The codec registry and format versions: every header names its codec's format; older headers
are read through codec/legacy.py, newer or incomplete ones are refused in one line, and every
decoded file offers the same Decoded interface."""

import json
from pathlib import Path

import numpy as np
import pytest

from hemgs.codec import legacy, registry
from hemgs.container import read_hgs
from hemgs.errors import FormatError

GOLDEN = Path(__file__).resolve().parent / "golden"
RECORD = json.loads((GOLDEN / "checksums.json").read_text())


def _golden(name):
    return read_hgs(GOLDEN / name)


def test_every_codec_is_registered_once_with_a_current_format():
    assert set(registry.CODECS) == {("anchor", "hac"), ("anchor", "hemgs"), ("direct", "hemgs")}
    for codec in registry.CODECS.values():
        assert codec.format >= 2
        assert codec.identity() == {"mode": codec.mode, "codec": codec.name, "format": codec.format}


def test_an_unknown_codec_or_mode_is_refused_by_name():
    with pytest.raises(FormatError, match="unknown codec 'jpeg'"):
        registry.decode({"mode": "anchor", "codec": "jpeg"}, {})
    with pytest.raises(FormatError, match="coding mode 'voxel'"):
        registry.decode({"mode": "voxel", "codec": "hemgs"}, {})
    with pytest.raises(FormatError, match="not a JSON object"):
        registry.current_header(["mode", "direct"])


@pytest.mark.parametrize("name", ["tiny_a.hgs", "tiny_hemgs.hgs", "tiny_direct.hgs"])
def test_a_format_1_header_reads_as_the_current_format(name):
    """The goldens predate format numbers: legacy.upgrade writes in what their missing fields
    meant, and the current reader then finds every field it requires."""
    header = _golden(name).header
    assert "format" not in header
    up = registry.current_header(header)
    assert up["format"] == registry.get(header["mode"], header["codec"]).format
    assert up["networks"] == "float16"
    assert "format" not in header  # the file's own dict is left alone
    if header["mode"] == "direct":
        assert up["direct"]["rotation"] == "rotvec" and up["skips"] is False
        assert up["position_lattice"] is None and up["position_log_lattice"] is None
    elif header["codec"] == "hemgs":
        assert up["hemgs"]["rate_exponent"] == 0.0
    # a field the old file did name is never overwritten by a default
    assert all(up[k] == v for k, v in header.items() if not isinstance(v, dict))


@pytest.mark.parametrize("name", ["tiny_a_qnet.hgs", "tiny_hemgs_qnet.hgs", "tiny_direct_twist.hgs"])
def test_a_file_of_a_newer_format_is_refused_in_one_line(name):
    f = _golden(name)
    newer = registry.get(f.header["mode"], f.header["codec"]).format + 1
    with pytest.raises(FormatError, match=f"format {newer} of its codec, newer than this hemgs") as err:
        registry.decode({**f.header, "format": newer}, f.sections)
    assert "\n" not in str(err.value)
    for bad in (0, -1, "2", True, 2.0):
        with pytest.raises(FormatError, match="malformed format number"):
            registry.decode({**f.header, "format": bad}, f.sections)


@pytest.mark.parametrize("name,key", [("tiny_direct_twist.hgs", "skips"), ("tiny_direct_twist.hgs", "networks"),
                                      ("tiny_a_qnet.hgs", "networks"), ("tiny_hemgs_qnet.hgs", "networks")])
def test_a_current_header_missing_a_field_is_refused_not_guessed(name, key):
    """Format 2 names every field: a missing one is damage, not an old file."""
    f = _golden(name)
    header = {k: v for k, v in registry.current_header(f.header).items() if k != key}
    with pytest.raises(FormatError) as err:
        registry.decode(header, f.sections)
    assert "\n" not in str(err.value)


def test_a_current_config_missing_a_field_is_refused():
    f = _golden("tiny_direct_twist.hgs")
    header = registry.current_header(f.header)
    header["direct"] = {k: v for k, v in header["direct"].items() if k != "chain"}
    with pytest.raises(FormatError, match="missing.*chain"):
        registry.decode(header, f.sections)
    f = _golden("tiny_hemgs.hgs")
    header = registry.current_header(f.header)
    header["hemgs"] = {k: v for k, v in header["hemgs"].items() if k != "rate_exponent"}
    with pytest.raises(FormatError, match="missing.*rate_exponent"):
        registry.decode(header, f.sections)


def test_legacy_defaults_are_the_old_files_own_not_todays():
    """A later change of a dataclass default must not change how an old file reads."""
    up = legacy.upgrade({"mode": "direct", "codec": "hemgs", "direct": {"rotation": "swing_twist"}}, 2)
    assert up["direct"]["rotation"] == "swing_twist" and up["direct"]["laplace"] == []
    assert legacy.upgrade({"mode": "direct", "codec": "hemgs", "direct": 3}, 2)["direct"] == 3  # left to the reader


@pytest.mark.parametrize("name", ["tiny_a.hgs", "tiny_hemgs_qnet.hgs", "tiny_direct_rep.hgs"])
def test_every_decoded_file_has_gaussians_and_a_renderer(name):
    from hemgs.cameras import sample_views

    decoded = registry.decode(*(lambda f: (f.header, f.sections))(_golden(name)))
    scene = decoded.gaussians()
    assert len(scene) > 0 and np.isfinite(scene.means).all()
    if decoded.header["mode"] == "direct":
        assert decoded.gaussians(0).sh_degree == 0
    else:
        assert scene.sh_degree == 1  # baked at the export degree
    cam = sample_views(scene, 1, width=32, height=32)[0]
    img = np.asarray(decoded.renderer("cpu")(cam))
    assert img.shape == (32, 32, 3) and np.isfinite(img).all() and img.max() > 0


def test_encoders_write_their_codecs_current_format(tmp_path):
    from golden.make_golden import tiny_direct_fit

    from hemgs.direct import encode

    header, sections, _ = encode(tiny_direct_fit(0, 120, 0), lam=1.0, balance=False)
    assert header["format"] == registry.get("direct", "hemgs").format
    assert registry.current_header(header) is header  # nothing to upgrade


def test_a_file_naming_an_unknown_codec_or_a_newer_format_says_which_file(tmp_path):
    from hemgs.container import pack_hgs
    from hemgs.pipeline import decode_file

    f = _golden("tiny_direct_twist.hgs")
    for change, says in (({"codec": "jpeg"}, "unknown codec 'jpeg'"), ({"format": 99}, "format 99 of its codec")):
        path = tmp_path / "odd.hgs"
        path.write_bytes(pack_hgs({**f.header, **change}, f.sections))
        with pytest.raises(FormatError, match=says) as err:
            decode_file(path)
        assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)
