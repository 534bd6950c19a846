"""afa_d2.inspection.tables / tools/make_tables.py: the paper's Tables 1, 3-6 from run folders, our AP beside the
paper's; configs/README.md's tables are exactly what make_tables generates from no runs."""
import json
import os

import pytest

import afa_d2  # noqa: F401  (before detectron2)
from afa_d2.inspection import blocks, cli, tables
from afa_d2.model_zoo import get_config
from afa_d2.model_zoo.paper import PAPER_RESULTS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "configs", "README.md")
R50 = "COCO/cascade_mask_rcnn_R_50_{}_1x.py"


def _write_run(folder, config, evals, overrides=(), final_only=False):
    """A run folder as train_net.py leaves it: the dumped config, and metrics.json with training lines and
    evaluation lines ((box AP, mask AP) in order; the last is the final evaluation)."""
    from detectron2.config import LazyConfig

    os.makedirs(folder, exist_ok=True)
    cfg = get_config(config)
    LazyConfig.apply_overrides(cfg, list(overrides))
    LazyConfig.save(cfg, os.path.join(folder, "config.yaml"))
    with open(os.path.join(folder, "metrics.json"), "w") as f:
        for k, ev in enumerate(evals):
            f.write(json.dumps({"iteration": 100 * k + 19, "total_loss": 1.0 / (k + 1), "lr": 1e-4}) + "\n")
            if ev is not None:
                row = {"iteration": 100 * k + 99, "bbox/AP": ev[0], "bbox/AP50": ev[0] + 20}
                if ev[1] is not None:
                    row["segm/AP"] = ev[1]
                f.write(json.dumps(row) + "\n")
    return folder


def _table(markdown, number):
    """The text of table ``number`` in make_tables' output."""
    return markdown.split("**Table {}**".format(number))[1].split("**Table")[0]


def _row(markdown, config):
    lines = [line for line in markdown.splitlines() if line.startswith("| `{}`".format(config))]
    assert len(lines) == 1, (config, lines)
    return [c.strip() for c in lines[0].strip("|").split("|")]


def test_readme_tables_are_generated():
    """configs/README.md's paper tables are make_tables' output from no runs: they cannot be edited by hand."""
    with open(README) as f:
        committed = blocks.read_blocks(f.read())
    generated = tables.make_tables()["blocks"]
    assert list(committed) == ["table1", "table3", "table4", "table5", "table6"]
    for key in generated:
        assert committed[key] == generated[key], (
            "configs/README.md block {} differs from what afa_d2.inspection.tables generates; run "
            "python tools/make_tables.py --update configs/README.md".format(key))


def test_tables_hold_the_papers_rows():
    for spec in tables.TABLES.values():
        in_paper = {name for name, row in PAPER_RESULTS.items() if row["table"] == spec.number}
        assert in_paper <= set(spec.rows), (spec.key, in_paper - set(spec.rows))
        assert set(spec.rows) <= set(PAPER_RESULTS), (spec.key, set(spec.rows) - set(PAPER_RESULTS))
    # every row is a distinct config, so a run is placed in one row only
    sigs = [json.dumps(tables.config_signature(get_config(c)), sort_keys=True) for c in tables.table_configs()]
    assert len(set(sigs)) == len(sigs)
    # the paper's own tables: Table 4 / 5 print 43.4 / 38.6 for the Cascade R-50 MSSA row, Table 1 43.3 / 38.3
    assert tables.paper_values("1", R50.format("mssa")) == {"box_AP": 43.3, "mask_AP": 38.3, "fps": 11.9}
    assert tables.paper_values("4", R50.format("mssa"))["box_AP"] == 43.4
    block = tables.make_tables(tables=["1"])["blocks"]["table1"]
    assert _row(block, R50.format("msca")) == ["`{}`".format(R50.format("msca")), "R-50", "MSCA", "43.4", "38.6",
                                               "11.9"]
    assert _row(tables.make_tables(tables=["4"])["blocks"]["table4"], R50.format("mssa_p4p5"))[1] == \
        "p4, p5 (P2, P3)"


def test_runs_placed_by_their_config(tmp_path, capsys):
    runs = tmp_path / "output"
    # a changed lr and output folder do not move a run; its final evaluation is the last line with bbox/AP
    _write_run(str(runs / "sum"), R50.format("sum"), [(30.0, 28.0), (41.0, 36.0)],
               ["optimizer.lr=2e-4", "train.output_dir=/elsewhere"])
    _write_run(str(runs / "msca"), R50.format("msca"), [(35.5, 30.0), None, (43.0, 38.25)])
    _write_run(str(runs / "lvis_mssa"), "LVIS/mask_rcnn_R_50_mssa_1x.py", [(24.0, 23.0)])
    # three epochs (a fine-tuning run) is no table row
    _write_run(str(runs / "short"), R50.format("mssa_p5"), [(40.0, 35.0)], ["train.epochs=3"])
    out_md = tmp_path / "tables.md"
    rc = cli.make_tables_main([str(runs / d) for d in ("sum", "msca", "lvis_mssa", "short")] +
                              ["--output", str(out_md)])
    captured = capsys.readouterr()
    assert rc == 0 and "wrote" in captured.out
    assert "run {} not placed".format(runs / "short") in captured.err and "--run CONFIG=" in captured.err
    text = out_md.read_text()
    t1, t3, t4, t5 = (_table(text, n) for n in (1, 3, 4, 5))
    assert "| config | backbone | operator | box AP | paper box AP | mask AP | paper mask AP | paper FPS | run |" in t1
    assert _row(t1, R50.format("msca"))[3:] == ["43.0 (+2.0)", "43.4 (+2.2)", "38.2 (+2.2)", "38.6 (+2.7)", "11.9",
                                                "`{}`".format(runs / "msca")]
    assert _row(t1, R50.format("sum"))[3:7] == ["41.0", "41.2", "36.0", "35.9"]
    assert _row(t1, R50.format("concat"))[3:] == ["missing", "40.9 (-0.3)", "missing", "35.8 (-0.1)", "12.8",
                                                  "missing"]
    # the LVIS row has no sum-up run to compare with: no gain
    assert _row(t3, "LVIS/mask_rcnn_R_50_mssa_1x.py")[3:5] == ["24.0", "24.1 (+1.6)"]
    # Table 4: the three-epoch run is not its p5 row; its sum-up row is the same run as Table 1's
    assert _row(t4, R50.format("mssa_p5"))[2] == "missing"
    assert _row(t4, R50.format("sum"))[2:6] == ["41.0", "41.2", "36.0", "35.9"]
    # the all-four row has Table 4's own paper numbers (43.4, not Table 1's 43.3), compared with sum-up
    assert _row(t4, R50.format("mssa"))[2:4] == ["missing", "43.4 (+2.2)"]
    assert _row(t5, R50.format("mssa_adaptive"))[2:4] == ["missing", "43.1 (+1.9)"]


def test_explicit_run_and_box_only(tmp_path):
    run = tmp_path / "mine"
    _write_run(str(run), R50.format("sum"), [(20.0, None)])
    os.remove(run / "config.yaml")  # placed by hand, it needs no config
    out = tables.make_tables(explicit={"COCO/cascade_mask_rcnn_swin_T_mssa_1x.py": str(run)}, tables=["6"])
    row = _row(out["blocks"]["table6"], "COCO/cascade_mask_rcnn_swin_T_mssa_1x.py")
    assert row[2:6] == ["20.0", "48.8 (+0.8)", "—", "42.3 (+0.8)"]
    placed, unplaced = tables.place_runs([str(run)])
    assert placed == {} and "no config.yaml" in unplaced[0][1]


def test_update_rewrites_only_the_blocks(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("# Results\n\nintro\n\n{}\nstale table\n{}\n\nafter\n".format(blocks.BEGIN.format("table3"),
                                                                                  blocks.END))
    assert cli.make_tables_main(["--update", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# Results\n\nintro\n\n") and text.endswith("\n\nafter\n") and "stale" not in text
    assert blocks.read_blocks(text) == {"table3": tables.make_tables(tables=["3"])["blocks"]["table3"]}
    assert blocks.NOTE in text
    assert cli.make_tables_main(["--update", str(doc)]) == 0 and "already up to date" in capsys.readouterr().out


def _error(capsys, argv):
    assert cli.make_tables_main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def test_metrics_json_cut_short_by_a_kill_still_reads_and_a_damaged_one_is_named(tmp_path, caplog):
    """detectron2 appends one JSON object a line to metrics.json; a run killed mid-write leaves its last line
    cut short. Everything before that line is whole: the tables and the publisher read it (with a warning);
    a bad line elsewhere is damage, named by file and line."""
    import logging

    from afa_d2.engine.metrics_json import read_metrics

    run = _write_run(str(tmp_path / "killed"), R50.format("msca"), [(40.0, 35.0), (41.5, 36.5)])
    metrics = os.path.join(run, "metrics.json")
    with open(metrics, "a") as f:
        f.write('{"iteration": 219, "total_lo')  # the next row, cut short
    with caplog.at_level(logging.WARNING):
        rows = read_metrics(metrics)
    assert len(rows) == 4 and rows[-1]["bbox/AP"] == 41.5
    assert "the last line (5) is cut short" in caplog.text and metrics in caplog.text
    result = tables.read_run(run)
    assert (result.box_AP, result.mask_AP, result.iteration) == (41.5, 36.5, 199)
    from afa_d2.model_zoo.publish import read_run as publish_read_run

    assert publish_read_run(run)["metrics"] == {"box_AP": 41.5, "box_AP50": 61.5, "mask_AP": 36.5}
    # damage in the middle, or a line that is not an object: an error naming the line, not a traceback
    lines = open(metrics).read().split("\n")
    for bad, what in (('{"iteration": 1', "line 2 is not JSON"), ("[1, 2]", "line 2 is a JSON list")):
        with open(metrics, "w") as f:
            f.write("\n".join([lines[0], bad] + lines[2:4]) + "\n")
        with pytest.raises(ValueError, match=what):
            read_metrics(metrics)
        with pytest.raises(tables.RunError, match=what + ".*--eval-only"):
            tables.read_run(run)
        with pytest.raises(ValueError, match=what):
            publish_read_run(run)


def test_bad_input_is_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    line = _error(capsys, [str(empty)])
    assert "has no metrics.json" in line and str(empty) in line and "train.output_dir" in line
    no_eval = _write_run(str(tmp_path / "noeval"), R50.format("sum"), [None, None])
    line = _error(capsys, [no_eval])
    assert "no evaluation" in line and "bbox/AP" in line
    line = _error(capsys, [str(tmp_path / "nowhere")])
    assert "no such folder" in line
    a = _write_run(str(tmp_path / "a"), R50.format("msca"), [(40.0, 35.0)])
    b = _write_run(str(tmp_path / "b"), R50.format("msca"), [(41.0, 36.0)])
    line = _error(capsys, [a, b])
    assert "two runs for {}".format(R50.format("msca")) in line and a in line and b in line
    line = _error(capsys, ["--run", "COCO/mask_rcnn_R_50_msca.py={}".format(a)])
    assert "is not a row" in line and "COCO/mask_rcnn_R_50_msca_1x.py" in line
    line = _error(capsys, ["--run", a])
    assert "CONFIG=DIR" in line
    line = _error(capsys, ["--tables", "2"])
    assert "unknown table '2'" in line and "1, 3, 4, 5, 6" in line
    plain = tmp_path / "plain.md"
    plain.write_text("# no blocks\n")
    line = _error(capsys, ["--update", str(plain)])
    assert "no make_tables blocks" in line
    broken = tmp_path / "broken.md"
    broken.write_text("{}\n| x |\n".format(blocks.BEGIN.format("table1")))
    with pytest.raises(tables.RunError, match="has no"):
        blocks.read_blocks(broken.read_text())
