"""report.template_dir (--template-dir): a user folder searched before the default templates, the
defaults reachable as `default:NAME`, extra pages, static files, and the render key following the
folder's contents."""

import re

import pytest
from click.testing import CliRunner

from dmd2report.cli import cli
from dmd2report.config import ReportConfig, load_config
from dmd2report.errors import UserError
from dmd2report.report.render import render_site
from synthetic import synthetic_report_data

HOSTILE = "<script>alert(1)</script>"
LOGO = '<img class="lab-logo" src="{{ root }}static/logo.svg" alt="Lab logo">'


def _user_folder(root):
    """The README's example: base.html adding a logo to every page, about.html as an extra page, a
    user classes.html printing class names itself, a partial, and the logo under static/."""
    root.mkdir()
    (root / "static").mkdir()
    (root / "static" / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>')
    (root / "base.html").write_text('{% extends "default:base.html" %}\n'
                                    '{% block header %}' + LOGO + '{{ super() }}{% endblock %}\n')
    (root / "about.html").write_text('{% extends "base.html" %}\n{% block content %}<h1>About this run</h1>'
                                     '<p>{{ run.name }}: {{ n_real|int }} real images</p>{% include "_note.html" %}'
                                     '{% endblock %}\n')
    (root / "_note.html").write_text("<p class=note>a partial, not a page</p>\n")
    (root / "classes.html").write_text('{% extends "default:classes.html" %}\n{% block content %}'
                                       '<ul class="mine">{% for r in rows %}<li>{{ r.name }}</li>{% endfor %}</ul>'
                                       '{{ super() }}{% endblock %}\n')
    return root


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tpl")
    data = synthetic_report_data(120, 60, 4, seed=3, class_names={1: HOSTILE})
    data.run.name = 'run "<b>bold</b>"'
    user = _user_folder(tmp / "mine")
    root = tmp / "site"
    return root, render_site(data, root, ReportConfig(template_dir=str(user))), data


def test_base_override_shows_the_logo_on_every_page(site):
    root, files, _ = site
    pages = [f for f in files if f.suffix == ".html"]
    assert len(pages) > 8
    for f in pages:
        html = f.read_text()
        depth = f.relative_to(root).as_posix().count("/")
        assert f'<img class="lab-logo" src="{"../" * depth}static/logo.svg"' in html, f
        assert 'data-nav="index"' in html  # the default header is still there (super())
    assert (root / "static" / "logo.svg").read_text().startswith("<svg")
    assert (root / "static" / "site.js").is_file()  # ours still copied beside the user's


def test_extra_page_is_written_and_linked_from_every_page(site):
    root, files, _ = site
    about = (root / "about.html").read_text()
    assert "<h1>About this run</h1>" in about and "120 real images" in about
    assert "a partial, not a page" in about
    assert "<title>About · " in about
    assert re.search(r'<a href="about.html" data-nav="about" aria-current="page">About</a>', about)
    names = {f.relative_to(root).as_posix() for f in files}
    assert "_note.html" not in names
    for f in ("index.html", "classes/class-2.html"):
        html = (root / f).read_text()
        assert re.search(r'<a href="(\.\./)?about.html" data-nav="about">About</a>', html), f


def test_autoescape_holds_in_user_templates(site):
    root, _, _ = site
    classes = (root / "classes.html").read_text()
    assert '<ul class="mine">' in classes
    assert "<li>&lt;script&gt;alert(1)&lt;/script&gt;</li>" in classes
    about = (root / "about.html").read_text()
    assert "run &#34;&lt;b&gt;bold&lt;/b&gt;&#34;: 120" in about
    for f in root.rglob("*.html"):
        text = f.read_text()
        assert HOSTILE not in text and "<b>bold</b>" not in text, f


def test_single_file_uses_user_pages_and_overrides(tmp_path):
    data = synthetic_report_data(60, 30, 3, seed=1)
    user = _user_folder(tmp_path / "mine")
    (user / "single.html").write_text('{% extends "default:single.html" %}\n{% block header %}<b id=brand>Lab</b>'
                                      '{{ super() }}{% endblock %}\n')
    html = render_site(data, tmp_path / "one", ReportConfig(single_file=True, template_dir=str(user)))[0].read_text()
    assert '<b id=brand>Lab</b>' in html
    assert 'data-page-section="about"' in html and 'href="#page=about"' in html


def test_bad_folders_and_page_names_are_one_line_errors(tmp_path):
    data = synthetic_report_data(40, 20, 2, seed=2)
    with pytest.raises(UserError, match=r"^.*nope: report.template_dir: folder not found$"):
        render_site(data, tmp_path / "s", ReportConfig(template_dir=str(tmp_path / "nope")))
    (tmp_path / "file.html").write_text("x")
    with pytest.raises(UserError, match="file.html: report.template_dir: not a folder"):
        render_site(data, tmp_path / "s", ReportConfig(template_dir=str(tmp_path / "file.html")))
    user = tmp_path / "u"
    (user / "static").mkdir(parents=True)
    (user / "static" / "site.js").write_text("// mine")
    with pytest.raises(UserError, match=r"site.js: report.template_dir: static/site.js would replace"):
        render_site(data, tmp_path / "s", ReportConfig(template_dir=str(user)))
    (user / "static" / "site.js").unlink()
    (user / "class-1.html").write_text("x")  # the name of a class page
    with pytest.raises(UserError, match=r"class-1.html: report.template_dir: 'class-1' is already a page"):
        render_site(data, tmp_path / "s", ReportConfig(template_dir=str(user)))
    (user / "class-1.html").unlink()
    (user / "my page.html").write_text("x")
    with pytest.raises(UserError, match=r"my page.html: report.template_dir: page names may hold"):
        render_site(data, tmp_path / "s", ReportConfig(template_dir=str(user)))


def test_missing_folder_through_the_cli(tmp_path):
    missing = tmp_path / "no-such-templates"
    r = CliRunner().invoke(cli, ["render", "--workdir", str(tmp_path / "w"), "--site", str(tmp_path / "site"),
                                 "--template-dir", str(missing)], prog_name="dmd2report")
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines() == [f"error: {missing}: report.template_dir: folder not found"]


def test_editing_a_user_template_changes_only_the_render_key(tmp_path):
    from dmd2report.context import Context
    from dmd2report.pipeline import stage_keys

    user = _user_folder(tmp_path / "mine")

    def keys(template_dir):
        return stage_keys(Context.create(load_config(None, {"run.workdir": str(tmp_path / "w"),
                                                            "report.template_dir": template_dir})))
    plain, first = keys(""), keys(str(user))
    assert first["render"] != plain["render"] and first["measure"] == plain["measure"]
    assert keys(str(user)) == first  # nothing changed: nothing reruns
    for edit in (user / "about.html", user / "static" / "logo.svg"):
        edit.write_text(edit.read_text() + "\n<!-- edited -->")
        edited = keys(str(user))
        assert edited["render"] != first["render"], edit
        assert {k: v for k, v in edited.items() if k != "render"} == {k: v for k, v in first.items() if k != "render"}
        first = edited
