"""All checks first: every mistake that needs no model output is one line and exit 2 before the first stage runs (no
stage line, nothing in the work directory): the site folder, the templates, the encoders' files, the reference
statistics, the free disk space."""

import shutil
from collections import namedtuple
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from dmd2report import preflight
from dmd2report.cli import cli

CONFIG = """
[run]
workdir = "{w}"
site = "{site}"
device = "cpu"
[model]
preset = "tiny"
[data]
source = "demo"
per_class = 2
[report]
thumb_size = 8
"""




@pytest.fixture
def config(tmp_path):
    path = tmp_path / "report.toml"
    path.write_text(CONFIG.format(w=tmp_path / "work", site=tmp_path / "site"))
    return path


def refused(tmp_path, *args) -> str:
    """Run the CLI; assert exit 2, one line on stderr, no stage started and nothing written; return the line."""
    r = CliRunner().invoke(cli, list(args))
    lines = r.stderr.splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (r.exit_code, r.output)
    assert not (tmp_path / "work").exists() and r.stdout == ""
    return lines[0]


def test_site_that_is_a_file_the_workdir_or_a_foreign_folder(tmp_path, config):
    (tmp_path / "site").write_text("not a folder")
    assert refused(tmp_path, "build", "--config", str(config)) == \
        f"error: {tmp_path / 'site'}: run.site is a file, not a folder; choose another --site folder"
    assert refused(tmp_path, "render", "--config", str(config)).endswith("run.site is a file, not a folder; "
                                                                         "choose another --site folder")
    for site in (tmp_path / "work", tmp_path):
        assert refused(tmp_path, "build", "--config", str(config), "--site", str(site)) == \
            f"error: {site}: run.site would replace the work directory {tmp_path / 'work'} (run.workdir); choose " \
            f"another --site folder"
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    assert refused(tmp_path, "build", "--config", str(config), "--site", str(foreign)) == \
        f"error: {foreign}: folder is not empty and is not a dmd2report site; choose another --site folder"
    (foreign / ".dmd2report-site").write_text("rendered by dmd2report")   # a site of ours may be replaced
    preflight.check_site(replace(_config(config), run=replace(_config(config).run, site=str(foreign))))


def _config(path):
    from dmd2report.config import load_config

    return load_config(path)


TEMPLATE_CASES = {   # file: (text, the message after "<file>:")
    "about.html": ('{% extends "base.html" %}\n{% block content %}\n<p>{{ n_real|int }}</p>\n<p>{{ labname }}</p>\n'
                   '{% endblock %}',
                   "4: template error: 'labname' is undefined: the page is rendered with bokeh_script, divs, "),
    "syntax.html": ('{% extends "base.html" %}\n{% block content %}\n{% if run %}\n{% endblock %}',
                    "4: template error: Encountered unknown tag 'endblock'."),
    "filter.html": ('{% extends "base.html" %}\n{% block content %}{{ run.name|shout }}{% endblock %}',
                    "2: template error: No filter named 'shout'."),
    "map.html": ('{% extends "default:map.html" %}\n{% block content %}{{ n_drawn }} {{ cards }}{% endblock %}',
                 "2: template error: 'cards' is undefined: the page is rendered with "),
}


@pytest.mark.parametrize("name", TEMPLATE_CASES)
def test_template_errors_are_one_line_with_file_and_line(tmp_path, config, name):
    text, message = TEMPLATE_CASES[name]
    folder = tmp_path / "tpl"
    folder.mkdir()
    (folder / name).write_text(text)
    line = refused(tmp_path, "build", "--config", str(config), "--template-dir", str(folder))
    assert line.startswith(f"error: {folder / name}:{message}"), line


def test_templates_that_render_pass(tmp_path, config):
    """Ours, and a user's page using every name PAGE_CONTEXT promises (render gives them all: the rendered page shows
    each), a name guarded by `is defined`, the map's own names in a replaced map.html, and a partial."""
    from synthetic import synthetic_report_data

    from dmd2report.config import ReportConfig
    from dmd2report.report.render import render_site

    folder = tmp_path / "tpl"
    folder.mkdir()
    used = " ".join(f"[{n}={{{{ ({n}|string) is string }}}}]" for n in preflight.PAGE_CONTEXT)
    (folder / "every.html").write_text('{% extends "base.html" %}{% block content %}' + used +
                                       '{% if lab is defined %}{{ lab }}{% endif %}{% include "_part.html" %}'
                                       '{% endblock %}')
    (folder / "_part.html").write_text("<p>{{ cards|length if cards is defined else run.name }}</p>")
    (folder / "map.html").write_text('{% extends "default:map.html" %}{% block content %}{{ n_drawn }}{{ super() }}'
                                     '{% endblock %}')
    preflight.check_templates("")
    preflight.check_templates(str(folder))
    data = synthetic_report_data(60, 40, 4, seed=0)
    render_site(data, tmp_path / "site", ReportConfig(template_dir=str(folder)))
    html = (tmp_path / "site" / "every.html").read_text()
    assert all(f"[{n}=True]" in html for n in preflight.PAGE_CONTEXT), html


def test_encoder_weights_and_reference_statistics(tmp_path, config):
    text = config.read_text()
    torch_weights = tmp_path / "generator.safetensors"
    save_file({"model.enc.16x16_conv.weight": torch.zeros(2, 3, 3, 3)}, torch_weights)
    with_encoder = text + f'[[encoders]]\nname = "inception"\nkind = "inception"\nweights = "{torch_weights}"\n'
    config.write_text(with_encoder)
    assert refused(tmp_path, "build", "--config", str(config)) == \
        f"error: {torch_weights}: holds a DMD2/EDM generator (EDMPrecond), not the weights of an encoder of kind " \
        f"inception (encoders 'inception'; wrong kind of weights file?)"
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(torch_weights.read_bytes()[:60])
    config.write_text(with_encoder.replace(str(torch_weights), str(truncated)))
    assert refused(tmp_path, "extract", "--config", str(config)).startswith(
        f"error: {truncated}: not a readable safetensors file (")
    config.write_text(with_encoder.replace(str(torch_weights), str(tmp_path / "missing.pth")))
    assert refused(tmp_path, "generate", "--config", str(config)).endswith(f"{tmp_path / 'missing.pth'}: no such file")

    stats = tmp_path / "ref.npz"
    np.savez(stats, mu=np.zeros(5), sigma=np.eye(5))
    config.write_text(text + '[[encoders]]\nname = "classifier"\nkind = "demo-classifier"\n'
                             f'weights = "bundled:demo-classifier"\nreference_stats = "{stats}"\n'
                             '[[encoders]]\nname = "inception"\nkind = "inception"\n'
                             f'weights = "bundled:demo-classifier"\nreference_stats = "{stats}"\n')
    assert refused(tmp_path, "measure", "--config", str(config)) == \
        f"error: {stats}: reference statistics have dimension 5; this feature space has 2048"
    stats.write_bytes(b"PK\x03\x04 truncated")
    assert refused(tmp_path, "measure", "--config", str(config)).startswith(
        f"error: {stats}: cannot read reference statistics (")


def test_free_disk_space_against_the_expected_stores(tmp_path, config, monkeypatch):
    c = _config(config)
    need, per_sample = preflight.expected_bytes(c)
    assert preflight.expected_samples(c) == (24, 1200 + 240 * 3)
    assert need == (24 + 1920) * per_sample and per_sample > 3 * 8 * 8
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - need // 2, need // 2))
    line = refused(tmp_path, "build", "--config", str(config))
    assert line.startswith(f"error: {tmp_path / 'work'}: not enough disk space: the run's stores need about "
                           f"{need / 2**30:.2f} GiB ({per_sample:,} bytes a sample), {need // 2 / 2**30:.2f} GiB free "
                           f"on "), line
    assert refused(tmp_path, "extract", "--config", str(config)) == line
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 0, need + 1))
    preflight.check_disk_space(c)
