//! `ovkd data ...` as a user runs it: help texts, synth -> stats -> show -> validate.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};

fn ovkd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ovkd"))
        .args(args)
        .output()
        .expect("run ovkd")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn tiny_synth(out: &Path, seed: &str) -> Output {
    ovkd(&[
        "data",
        "synth",
        "--out",
        out.to_str().unwrap(),
        "--seed",
        seed,
        "--preset",
        "quick",
        "--train-images",
        "6",
        "--val-images",
        "3",
        "--pretrain-images",
        "5",
        "--image-size",
        "64",
    ])
}

fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[test]
fn help_texts_explain_themselves() {
    let top = ovkd(&["--help"]);
    assert!(top.status.success());
    let text = stdout(&top);
    assert!(text.contains("data"), "{text}");
    assert!(
        text.contains("Make, look at, count and check data"),
        "{text}"
    );

    let data = stdout(&ovkd(&["data", "--help"]));
    for sub in ["synth", "show", "stats", "validate"] {
        assert!(data.contains(sub), "{data}");
    }
    let cases: [(&str, &[&str]); 4] = [
        (
            "synth",
            &[
                "--out",
                "--seed",
                "--preset",
                "quick",
                "--set",
                "--threads",
                "--train-images",
                "--image-size",
                "instances_full.json",
                "captions.jsonl",
            ],
        ),
        (
            "show",
            &[
                "DIR_OR_JSON",
                "--out",
                "--split",
                "--limit",
                "--images",
                "boxes",
                "semantic mask",
                "no box or mask",
            ],
        ),
        (
            "stats",
            &["DIR_OR_JSON", "--json", "per class", "base or novel"],
        ),
        (
            "validate",
            &[
                "FILE",
                "--images",
                "--gt",
                "--box-tolerance",
                "non-zero",
                "every problem",
                "truncated",
                "duplicate",
                "negative size",
            ],
        ),
    ];
    for (sub, needles) in cases {
        let o = ovkd(&["data", sub, "--help"]);
        assert!(o.status.success(), "{sub}: {}", stderr(&o));
        let h = stdout(&o);
        for n in needles {
            assert!(h.contains(n), "`ovkd data {sub} --help` lacks {n:?}:\n{h}");
        }
    }
}

#[test]
fn synth_stats_show_validate() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let o = tiny_synth(&a, "3");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("written to"), "{}", stdout(&o));
    assert!(a.join("vocab.toml").is_file());
    assert!(a.join("train/images/000006.png").is_file());
    assert!(a.join("val/semantic/000003.png").is_file());
    assert!(a.join("pretrain/captions.jsonl").is_file());

    // Same seed, another directory: byte-identical. Another seed: different.
    let b = tmp.path().join("b");
    assert!(tiny_synth(&b, "3").status.success());
    assert!(tree(&a) == tree(&b), "same seed gave different files");
    let c = tmp.path().join("c");
    assert!(tiny_synth(&c, "4").status.success());
    assert!(tree(&a) != tree(&c));

    let st = ovkd(&["data", "stats", a.to_str().unwrap()]);
    assert!(st.status.success(), "{}", stderr(&st));
    let table = stdout(&st);
    for needle in [
        "train (all objects)",
        "val",
        "pretrain (captions)",
        "circle",
        "novel",
    ] {
        assert!(table.contains(needle), "{table}");
    }
    let js = ovkd(&["data", "stats", a.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&js.stdout).unwrap();
    assert_eq!(v["sources"][0]["images"], 6);

    let show_dir = tmp.path().join("show");
    let sh = ovkd(&[
        "data",
        "show",
        a.to_str().unwrap(),
        "--out",
        show_dir.to_str().unwrap(),
        "--split",
        "val",
        "--limit",
        "2",
    ]);
    assert!(sh.status.success(), "{}", stderr(&sh));
    assert!(show_dir.join("000001.png").is_file());
    assert!(show_dir.join("000002.png").is_file());
    assert!(!show_dir.join("000003.png").exists());

    let inst = a.join("val/instances.json");
    let ok = ovkd(&["data", "validate", inst.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    assert!(stdout(&ok).contains("ok (3 images"), "{}", stdout(&ok));
    assert!(
        stdout(&ok).contains("image files checked"),
        "{}",
        stdout(&ok)
    );
    let whole = ovkd(&["data", "validate", a.to_str().unwrap()]);
    assert!(whole.status.success(), "{}", stdout(&whole));
    assert_eq!(
        stdout(&whole).matches(": ok").count(),
        9,
        "{}",
        stdout(&whole)
    );
    let voc = ovkd(&["data", "validate", a.join("vocab.toml").to_str().unwrap()]);
    assert!(voc.status.success());
    assert!(stdout(&voc).contains("12 classes, 8 base/seen, 4 novel/unseen"));
}

#[test]
fn validate_reports_every_problem_and_fails() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.json");
    std::fs::write(
        &p,
        r#"{"images": [{"id": 1, "width": 10, "height": 10, "file_name": "x.png"},
                       {"id": 1, "width": 10, "height": 10, "file_name": "y.png"}],
            "annotations": [
              {"id": 1, "image_id": 2, "category_id": 1, "bbox": [0, 0, 1, 1], "area": 1},
              {"id": 2, "image_id": 1, "category_id": 5, "bbox": [0, 0, -1, 1], "area": 1},
              {"id": 3, "image_id": 1, "category_id": 1, "bbox": [8, 8, 5, 5], "area": 25}],
            "categories": [{"id": 1, "name": "a"}]}"#,
    )
    .unwrap();
    let imgs = tmp.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    let o = ovkd(&[
        "data",
        "validate",
        p.to_str().unwrap(),
        "--images",
        imgs.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 7, "{out}");
    for needle in [
        "image id 1 (#1), field `id`: duplicate image id 1",
        "x.png does not exist",
        "y.png does not exist",
        "annotation id 1 (#0), field `image_id`: image id 2 is not among the images",
        "annotation id 2 (#1), field `category_id`: category id 5 is not among the categories",
        "annotation id 2 (#1), field `bbox`: negative size",
        "annotation id 3 (#2), field `bbox`: box [8, 8, 5, 5] lies outside the 10x10 image",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    assert!(stderr(&o).contains("7 problems in"), "{}", stderr(&o));

    std::fs::write(&p, r#"{"images": [{"id": 1, "wid"#).unwrap();
    let o = ovkd(&["data", "validate", p.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("bad.json:1:"), "{}", stdout(&o));
    assert!(stdout(&o).contains("truncated"), "{}", stdout(&o));

    let o = ovkd(&[
        "data",
        "synth",
        "--out",
        tmp.path().to_str().unwrap(),
        "--preset",
        "quick",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("not an OV-Shapes directory"),
        "{}",
        stderr(&o)
    );
    let o = ovkd(&[
        "data",
        "synth",
        "--out",
        tmp.path().join("z").to_str().unwrap(),
        "--set",
        "colour=7",
    ]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("unknown setting \"colour\""),
        "{}",
        stderr(&o)
    );
}
