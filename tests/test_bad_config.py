"""Every config value is checked when the configuration loads, before any stage runs: each bad
value is one line naming the file (or the command line) and the key."""

import re

import pytest
from click.testing import CliRunner

from dmd2report.cli import cli
from dmd2report.config import UMAP_METRICS, Config, keys, load_config
from dmd2report.errors import UserError

F = "c.toml"
DEMO_LAYERS = re.escape("valid layers: encoder_bottleneck, midblock, encoder_block_0..8, decoder_block_0..12, enc.32x32_conv")

# (file text, the whole message after "<path>: ", or a regex when it starts with "re:")
CASES = {
    # The sweep of issue 17.
    "repeated layer": ('[features]\nlayers = ["midblock", "midblock"]',
                       "features.layers: 'midblock' is repeated; give each item once"),
    "alias and upstream name": ('[features]\nlayers = ["midblock", "dec.8x8_in0"]',
                                "features.layers: 'midblock' and 'dec.8x8_in0' are the same layer (dec.8x8_in0); "
                                "give each block once"),
    "alias and upstream name, another preset": (
        '[model]\npreset = "dmd2-imagenet64"\n[features]\nlayers = ["encoder_bottleneck", "enc.8x8_block2"]\n'
        '[metrics]\nlayer = "encoder_bottleneck"',
        "features.layers: 'encoder_bottleneck' and 'enc.8x8_block2' are the same layer (enc.8x8_block2); "
        "give each block once"),
    "negative variant_samples": ("[generate]\nvariant_samples = -5", "generate.variant_samples: must be >= 1, got -5"),
    "negative max_samples": ("[data]\nmax_samples = -1", "data.max_samples: must be >= 0, got -1"),
    "negative per_class": ("[data]\nper_class = -3", "data.per_class: must be >= 0, got -3"),
    "chunk_size 0": ("[features]\nchunk_size = 0", "features.chunk_size: must be >= 1, got 0"),
    "k_pr 0": ("[metrics]\nk_pr = 0", "metrics.k_pr: must be >= 1, got 0"),
    "bad UMAP metric": ('[embedding]\nmetric = "euclidian"',
                        "embedding.metric: 'euclidian' is not one of " + ", ".join(UMAP_METRICS)),
    "n_neighbors 1": ("[embedding]\nn_neighbors = 1", "embedding.n_neighbors: must be >= 2, got 1"),
    "min_dist nan": ("[embedding]\nmin_dist = nan", "embedding.min_dist: expected a finite number, got nan"),
    "no layers": ("[features]\nlayers = []", "features.layers: the list is empty; give at least one item"),
    # Ranges and choices of the other keys.
    "min_dist inf": ("[embedding]\nmin_dist = inf", "embedding.min_dist: expected a finite number, got inf"),
    "min_dist above spread": ("[embedding]\nmin_dist = 1.5", "embedding.min_dist: must be 0 <= x <= 1, got 1.5"),
    "min_dist negative": ("[embedding]\nmin_dist = -0.1", "embedding.min_dist: must be 0 <= x <= 1, got -0.1"),
    "k_dc 0": ("[metrics]\nk_dc = 0", "metrics.k_dc: must be >= 1, got 0"),
    "k_fidelity 0": ("[metrics]\nk_fidelity = 0", "metrics.k_fidelity: must be >= 1, got 0"),
    "k_neighbours 0": ("[metrics]\nk_neighbours = 0", "metrics.k_neighbours: must be >= 1, got 0"),
    "negative bootstrap": ("[metrics]\nbootstrap = -1", "metrics.bootstrap: must be >= 0, got -1"),
    "negative batch": ("[features]\nbatch_size = -8", "features.batch_size: must be >= 0, got -8"),
    "negative seed": ("[run]\nseed = -1", "run.seed: must be >= 0, got -1"),
    "tiny fit_subsample": ("[embedding]\nfit_subsample = 3", "embedding.fit_subsample: must be >= 4, got 3"),
    "zero size limit": ("[report]\nsingle_file_limit_mb = 0", "report.single_file_limit_mb: must be > 0, got 0.0"),
    "no samples": ("[generate]\nsamples = 0", "generate.samples: must be >= 1, got 0"),
    "atlas grid 0": ("[atlas]\natlas_grid = 0", "atlas.atlas_grid: must be >= 1, got 0"),
    "bad variant": ('[generate]\nvariants = ["class", "uniformm"]',
                    "generate.variants: 'uniformm' is not one of class, uniform, zero, blend"),
    "repeated variant": ('[generate]\nvariants = ["zero", "zero"]', "generate.variants: 'zero' is repeated; give each item once"),
    "bad reduce": ('[features]\nreduce = "pca:0"', "features.reduce: 'pca:0' is not one of full, mean, pca:K"),
    "bad device": ('[run]\ndevice = "gpu"', "run.device: 'gpu' is not one of auto, cpu, cuda, cuda:N, mps"),
    "bad fit_on": ('[embedding]\nfit_on = "all"', "embedding.fit_on: 'all' is not one of real, generated, both"),
    "unknown preset": ('[model]\npreset = "big"', "model.preset: 'big' is not one of auto, demo, dmd2-imagenet64, tiny"),
    "empty class": ('[data]\nclasses = ["goldfish", ""]', "data.classes: an item is empty; remove it"),
    "NaN sigma": ("[trajectory]\nsigmas = [80.0, nan]", "trajectory.sigmas: expected a finite number, got nan"),
    # Types.
    "boolean compile": ("[model]\ncompile = true", "model.compile: expected a string, got True"),
    "string flag": ('[report]\nsingle_file = "yes"', "report.single_file: expected true or false, got 'yes'"),
    "float count": ("[data]\nper_class = 2.5", "data.per_class: expected an integer, got 2.5"),
    "not a list": ('[features]\nlayers = "midblock"', "features.layers: expected a list, got 'midblock'"),
    # Moved keys.
    "moved mask_layer": ('[metrics]\nmask_layer = "midblock"', "metrics.mask_layer moved to atlas.mask_layer"),
    "moved anchors": ("[metrics]\nanchors_per_class = 2", "metrics.anchors_per_class moved to atlas.anchors_per_class"),
    "moved grid": ("[metrics]\natlas_grid = 8", "metrics.atlas_grid moved to atlas.atlas_grid"),
    # Between keys.
    "unknown layer": ('[features]\nlayers = ["bottleneck"]',
                      "re:features\\.layers \\(preset demo\\): unknown layer 'bottleneck'; " + DEMO_LAYERS),
    "unknown mask layer": ('[atlas]\nmask_layer = "middle"',
                           "re:atlas\\.mask_layer \\(preset demo\\): unknown layer 'middle'; " + DEMO_LAYERS),
    "headline not extracted": ('[features]\nlayers = ["midblock"]\n[metrics]\nlayer = "encoder_bottleneck"',
                               "metrics.layer: 'encoder_bottleneck' is not one of features.layers (midblock); "
                               "add it to features.layers or pick one of them"),
    "headline spelt otherwise": ('[metrics]\nlayer = "dec.8x8_in0"',
                                 "metrics.layer: 'dec.8x8_in0' is not one of features.layers (encoder_bottleneck, "
                                 "midblock); write it as in features.layers: 'midblock'"),
    "variant_samples above samples": ("[generate]\nsamples = 100\nvariant_samples = 240",
                                      "generate.variant_samples: 240 exceeds generate.samples (100); the variants share "
                                      "the first seeds of the class-conditioned set"),
    "blend paths without blend": ('[trajectory]\nconditioning = "blend"\n[generate]\nvariants = ["class"]',
                                  "trajectory.conditioning: 'blend' needs 'blend' in generate.variants"),
    "more blend paths than blends": ('[trajectory]\nconditioning = "blend"\nsamples = 300',
                                     "trajectory.samples: 300 exceeds generate.variant_samples (240), the blend set a "
                                     "path's blend comes from"),
    "rising sigmas": ("[trajectory]\nsigmas = [80.0, 100.0]",
                      "trajectory.sigmas: sigmas must be strictly decreasing, but 100 follows 80 in [80.0, 100.0]"),
    "folder without path": ('[data]\nsource = "folder"', "data.path: required for data.source = 'folder'"),
    # The file itself.
    "unknown key": ("[embedding]\nneighbours = 3", "re:unknown key embedding\\.neighbours; valid keys of \\[embedding\\]: "
                                                   "pca_components, n_neighbors"),
    "unknown section": ("[plots]\nx = 1", "re:unknown section \\[plots\\]; valid: run, model, data, features, generate, "
                                          "embedding, metrics, atlas, report, trajectory"),
    "bad TOML": ("[run\n", "not valid TOML (Expected ']' at the end of a table declaration (at line 1, column 5))"),
}


def _expect(path, message, error):
    text = str(error)
    assert "\n" not in text
    if message.startswith("re:"):
        assert re.fullmatch(re.escape(f"{path}: ") + message[3:] + ".*", text), text
    else:
        assert text == f"{path}: {message}"


@pytest.mark.parametrize("name", CASES)
def test_bad_value_in_file_is_one_line_naming_file_and_key(tmp_path, name):
    text, message = CASES[name]
    path = tmp_path / F
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_config(path)
    _expect(path, message, e.value)


def test_file_not_utf8(tmp_path):
    path = tmp_path / F
    path.write_bytes(b'[run]\nname = "caf\xe9"\n')
    with pytest.raises(UserError) as e:
        load_config(path)
    _expect(path, "not UTF-8 text (byte 0xe9 at offset 17); save the config file as UTF-8", e.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(UserError, match=r"nope\.toml: config file not found$"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(UserError, match=r": is a directory, not a config file$"):
        load_config(tmp_path)


@pytest.mark.parametrize("overrides, message", [
    ({"data.per_class": -3}, "command line: data.per_class: must be >= 0, got -3"),
    ({"features.layers": ["midblock", "midblock"]}, "command line: features.layers: 'midblock' is repeated; give each item once"),
    ({"model.compile": False}, "command line: model.compile: expected a string, got False"),
    ({"embedding.min_dist": float("nan")}, "command line: embedding.min_dist: expected a finite number, got nan"),
])
def test_bad_override_names_the_command_line(overrides, message):
    with pytest.raises(UserError) as e:
        load_config(None, overrides)
    assert str(e.value) == message


def test_cross_key_error_names_where_the_key_was_set(tmp_path):
    # features.layers from the file, metrics.layer from the command line: the message names the
    # origin of the key it is about, else that of the other key (the defaults are nobody's mistake).
    path = _write(tmp_path, '[features]\nlayers = ["midblock"]\n')
    with pytest.raises(UserError, match=r"^command line: metrics\.layer: 'encoder_bottleneck' is not one of"):
        load_config(path, {"metrics.layer": "encoder_bottleneck"})
    path = _write(tmp_path, '[features]\nlayers = ["encoder_bottleneck"]\n')
    with pytest.raises(UserError, match="^" + re.escape(f"{path}: metrics.layer: 'midblock' is not one of features.layers")):
        load_config(path)


def _write(tmp_path, text):
    path = tmp_path / F
    path.write_text(text)
    return path


def test_valid_edges_accepted(tmp_path):
    path = _write(tmp_path, '[data]\nmax_samples = 0\nper_class = 0\n[embedding]\nmin_dist = 1\nn_neighbors = 2\n'
                            'metric = "cosine"\n[generate]\nsamples = 240\nvariant_samples = 240\n'
                            '[features]\nlayers = ["enc.8x8_block1", "midblock"]\nreduce = "pca:16"\n'
                            '[metrics]\nlayer = "enc.8x8_block1"\n[atlas]\nmask_layer = "decoder_block_1"\n'
                            '[run]\ndevice = "cuda:1"\n[model]\ncompile = "off"\n')
    c = load_config(path)
    assert c.embedding.min_dist == 1.0 and c.atlas.mask_layer == "decoder_block_1" and c.model.compile == "off"
    # A disabled trajectory's schedule is not checked (nothing will sample it), but its numbers must still be numbers.
    assert load_config(None, {"trajectory.enabled": False, "trajectory.sigmas": [1.0, 2.0]}).trajectory.sigmas == [1.0, 2.0]


def test_umap_metrics_are_umaps_with_gradients():
    # The declared tuple stands in for importing umap at load: every name must be one umap-learn
    # accepts and can invert (the atlas inverts the map).
    from umap.distances import named_distances_with_gradients

    assert set(UMAP_METRICS) <= set(named_distances_with_gradients)


def test_every_key_declares_help_and_checks_its_default():
    from dmd2report.config import check_config

    for dotted, key in keys().items():
        assert key.setting.help.strip(), dotted
    check_config(Config())  # the defaults pass their own declarations


# ------------------------------------------------------------------ the command line


def _cli(args):
    r = CliRunner().invoke(cli, args, prog_name="dmd2report")
    return r.exit_code, r.stderr.strip().splitlines(), r.stdout


@pytest.mark.parametrize("args, message", [
    (["--per-class", "-3"], "error: command line: data.per_class: must be >= 0, got -3"),
    (["--layers", "midblock,dec.8x8_in0"],
     "error: command line: features.layers: 'midblock' and 'dec.8x8_in0' are the same layer (dec.8x8_in0); give each block once"),
    (["--layers", " , "], "error: command line: features.layers: the list is empty; give at least one item"),
    (["--fit-on", "nowhere"], "error: Invalid value for '--fit-on': 'nowhere' is not one of 'real', 'generated', 'both' "
                              "(see `dmd2report build --help`)"),
    (["--per-class", "many"], "error: Invalid value for '--per-class': 'many' is not a valid integer "
                              "(see `dmd2report build --help`)"),
    (["--preset", "big"], "error: command line: model.preset: 'big' is not one of auto, demo, dmd2-imagenet64, tiny"),
])
def test_cli_mistake_is_one_line_before_any_stage(tmp_path, args, message):
    work = tmp_path / "work"
    code, err, out = _cli(["build", "--workdir", str(work), "--site", str(tmp_path / "site"), *args])
    assert (code, err, out) == (2, [message], "")
    assert not work.exists()  # nothing ran


def test_cli_config_not_utf8(tmp_path):
    path = tmp_path / F
    path.write_bytes(b"[run]\nname = \"\xff\xfe\"\n")
    code, err, _ = _cli(["extract", "--config", str(path)])
    assert code == 2 and err == [f"error: {path}: not UTF-8 text (byte 0xff at offset 14); save the config file as UTF-8"]


def test_cli_old_key_names_the_new_one(tmp_path):
    path = _write(tmp_path, '[metrics]\nmask_layer = "midblock"\n')
    code, err, _ = _cli(["render", "--config", str(path)])
    assert code == 2 and err == [f"error: {path}: metrics.mask_layer moved to atlas.mask_layer"]
