//! The real-data experiments (`configs/ov-coco-vild.toml`, `ov-coco-baron.toml`,
//! `ov-lvis-vild.toml`, `voc-zs-lseg.toml`) end to end on tiny samples written here in the
//! official download layouts (COCO 2017, LVIS v1, VOCdevkit), with the tiny Hugging Face CLIP
//! fixture as the teacher: every stage runs and writes well-formed evaluations and a report.
//! The shipped configs themselves also parse and validate at full size.

mod common;
use common::{ok, ovkd, s};
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use ovkd_data::semantic::SemanticMask;
use ovkd_data::vocab::Vocabulary;
use ovkd_teacher::tokenizer::{ClipTokenizer, build_word_level};
use serde_json::{Value, json};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

/// The tiny CLIP fixture as a Hugging Face folder, with a word-level tokenizer whose ids fit its
/// 500-token embedding and whose end token is the 499 its config pools at.
fn tiny_clip(dir: &Path, vocabs: &[&Vocabulary]) -> PathBuf {
    let out = dir.join("clip");
    std::fs::create_dir_all(&out).unwrap();
    let fixture = root().join("fixtures/clip/tiny");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), out.join(f)).unwrap();
    }
    let mut texts: Vec<String> = vocabs
        .iter()
        .flat_map(|v| v.classes.iter())
        .flat_map(|c| c.all_names().map(String::from).collect::<Vec<_>>())
        .collect();
    texts.push(
        "a photo of the one small large bad there is in scene itap background sky wall floor \
         ground road grass tree"
            .into(),
    );
    let tok = out.join("tokenizer.json");
    let words = build_word_level(&texts, &tok).unwrap().vocab_size - 3;
    // Filler words push <start> and <end> to 498 and 499.
    assert!(words <= 497, "{words} words do not fit the tiny checkpoint");
    texts.extend((0..497 - words).map(|i| format!("zzfill{i}")));
    let v = build_word_level(&texts, &tok).unwrap();
    assert_eq!((v.sot, v.eot, v.vocab_size), (498, 499, 500));
    assert_eq!(ClipTokenizer::from_file(&tok, 16).unwrap().eot(), 499);
    out
}

/// A 64 x 48 photo-like image: a gradient with a coloured rectangle at `rect` (x1, y1, x2, y2).
fn write_jpg(path: &Path, rect: [u32; 4], colour: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = RgbImage::from_fn(64, 48, |x, y| {
        if x >= rect[0] && x < rect[2] && y >= rect[1] && y < rect[3] {
            Rgb(colour)
        } else {
            Rgb([(60 + x * 2) as u8, (80 + y * 2) as u8, 120])
        }
    });
    img.save(path).unwrap();
}

/// One object per image: (image id, file name, category id, box x1 y1 x2 y2, colour).
type Obj = (u64, &'static str, u64, [u32; 4], [u8; 3]);

fn coco_json(objs: &[Obj], categories: Value, lvis: bool) -> Value {
    let images: Vec<Value> = objs
        .iter()
        .map(|&(id, file, ..)| {
            let split = if file.starts_with("val") {
                "val2017"
            } else {
                "train2017"
            };
            let name = file.rsplit('/').next().unwrap();
            if lvis {
                // LVIS v1 names images by URL only, and lists the classes checked absent.
                json!({"id": id, "width": 64, "height": 48,
                    "coco_url": format!("http://images.cocodataset.org/{split}/{name}"),
                    "neg_category_ids": [], "not_exhaustive_category_ids": []})
            } else {
                json!({"id": id, "width": 64, "height": 48, "file_name": name,
                    "license": 1, "date_captured": "2013-11-14 16:28:13"})
            }
        })
        .collect();
    let annotations: Vec<Value> = objs
        .iter()
        .enumerate()
        .map(|(i, &(image_id, _, cat, [x1, y1, x2, y2], _))| {
            let (x1, y1, x2, y2) = (x1 as f64, y1 as f64, x2 as f64, y2 as f64);
            json!({"id": i + 1, "image_id": image_id, "category_id": cat,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
        })
        .collect();
    json!({"info": {"description": "tiny sample", "version": "1.0", "year": 2017},
        "licenses": [{"id": 1, "name": "CC BY 4.0", "url": ""}],
        "images": images, "annotations": annotations, "categories": categories})
}

fn write_images(root: &Path, objs: &[Obj]) {
    for &(_, file, _, rect, colour) in objs {
        let split = if file.starts_with("val") {
            "val2017"
        } else {
            "train2017"
        };
        write_jpg(
            &root.join(split).join(file.rsplit('/').next().unwrap()),
            rect,
            colour,
        );
    }
}

/// COCO 2017's layout: `annotations/instances_{train,val}2017.json`, `{train,val}2017/*.jpg`.
/// person (1), car (3) are OV-COCO base classes, airplane (5) and bus (6) novel, and hair drier
/// (89) is none of OV-COCO's 65.
fn coco_sample(root: &Path) {
    let red = [220, 40, 40];
    let blue = [40, 60, 220];
    let train: Vec<Obj> = vec![
        (9, "train/000000000009.jpg", 1, [8, 8, 30, 40], red),
        (25, "train/000000000025.jpg", 3, [20, 10, 56, 30], blue),
        (
            30,
            "train/000000000030.jpg",
            5,
            [4, 4, 40, 24],
            [40, 200, 40],
        ),
        (34, "train/000000000034.jpg", 1, [30, 6, 60, 44], red),
    ];
    let val: Vec<Obj> = vec![
        (139, "val/000000000139.jpg", 1, [10, 8, 34, 44], red),
        (
            285,
            "val/000000000285.jpg",
            6,
            [6, 12, 58, 40],
            [230, 200, 30],
        ),
        (632, "val/000000000632.jpg", 89, [20, 20, 40, 40], blue),
    ];
    let cats = json!([
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 5, "name": "airplane", "supercategory": "vehicle"},
        {"id": 6, "name": "bus", "supercategory": "vehicle"},
        {"id": 89, "name": "hair drier", "supercategory": "indoor"}
    ]);
    std::fs::create_dir_all(root.join("annotations")).unwrap();
    for (objs, name) in [(&train, "train2017"), (&val, "val2017")] {
        write_images(root, objs);
        std::fs::write(
            root.join(format!("annotations/instances_{name}.json")),
            serde_json::to_vec(&coco_json(objs, cats.clone(), false)).unwrap(),
        )
        .unwrap();
    }
}

/// LVIS v1's layout: `lvis_v1_{train,val}.json` beside each other, images in a COCO 2017
/// folder (`coco`). Frequent and common classes are base, the rare one novel.
fn lvis_sample(lvis: &Path, coco: &Path) -> Vocabulary {
    let train: Vec<Obj> = vec![
        (
            9,
            "train/000000000009.jpg",
            1,
            [8, 8, 30, 40],
            [220, 40, 40],
        ),
        (
            25,
            "train/000000000025.jpg",
            2,
            [20, 10, 56, 30],
            [40, 60, 220],
        ),
        (
            30,
            "train/000000000030.jpg",
            3,
            [4, 4, 40, 24],
            [40, 200, 40],
        ),
    ];
    let val: Vec<Obj> = vec![
        (
            139,
            "val/000000000139.jpg",
            1,
            [10, 8, 34, 44],
            [220, 40, 40],
        ),
        (
            285,
            "val/000000000285.jpg",
            3,
            [6, 12, 58, 40],
            [40, 200, 40],
        ),
    ];
    let cats = json!([
        {"id": 1, "name": "apple", "synonyms": ["apple"], "frequency": "f",
            "def": "fruit with red or yellow or green skin", "image_count": 1, "instance_count": 1,
            "synset": "apple.n.01"},
        {"id": 2, "name": "alarm_clock", "synonyms": ["alarm_clock"], "frequency": "c",
            "def": "a clock that wakes a sleeper", "image_count": 1, "instance_count": 1,
            "synset": "alarm_clock.n.01"},
        {"id": 3, "name": "armoire", "synonyms": ["armoire"], "frequency": "r",
            "def": "a large wardrobe or cabinet", "image_count": 1, "instance_count": 1,
            "synset": "armoire.n.01"}
    ]);
    std::fs::create_dir_all(lvis).unwrap();
    for (objs, name) in [(&train, "train"), (&val, "val")] {
        write_images(coco, objs);
        std::fs::write(
            lvis.join(format!("lvis_v1_{name}.json")),
            serde_json::to_vec(&coco_json(objs, cats.clone(), true)).unwrap(),
        )
        .unwrap();
    }
    let cats: Vec<ovkd_data::coco::CocoCategory> = serde_json::from_value(cats).unwrap();
    Vocabulary::from_lvis_categories("lvis", &cats, Path::new("lvis_v1_train.json")).unwrap()
}

/// VOCdevkit's layout: `VOC2012/{JPEGImages,SegmentationClass,Annotations}` and
/// `ImageSets/Segmentation/{train,val}.txt`; label PNGs with VOC's palette and 255 borders.
/// aeroplane (1) and person (15) are seen, sheep (17) unseen.
fn voc_sample(devkit: &Path) {
    let voc = devkit.join("VOC2012");
    let images: [(&str, &str, u16, [u32; 4], [u8; 3]); 5] = [
        ("2007_000032", "train", 1, [6, 10, 50, 30], [200, 200, 210]),
        ("2007_000039", "train", 15, [20, 4, 40, 44], [220, 40, 40]),
        (
            "2007_000063",
            "train",
            17,
            [10, 16, 44, 40],
            [240, 240, 230],
        ),
        ("2007_000033", "val", 1, [4, 8, 56, 28], [200, 200, 210]),
        ("2007_000042", "val", 17, [12, 14, 48, 42], [240, 240, 230]),
    ];
    for dir in ["JPEGImages", "SegmentationClass", "Annotations"] {
        std::fs::create_dir_all(voc.join(dir)).unwrap();
    }
    std::fs::create_dir_all(voc.join("ImageSets/Segmentation")).unwrap();
    let mut lists = [String::new(), String::new()];
    let names = [
        "",
        "aeroplane",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "",
        "person",
    ];
    for (id, split, class, [x1, y1, x2, y2], colour) in images {
        write_jpg(
            &voc.join(format!("JPEGImages/{id}.jpg")),
            [x1, y1, x2, y2],
            colour,
        );
        let mut m = SemanticMask::filled(64, 48, 0);
        for y in y1..y2 {
            for x in x1..x2 {
                let border = x == x1 || y == y1 || x == x2 - 1 || y == y2 - 1;
                m.set(x as usize, y as usize, if border { 255 } else { class });
            }
        }
        std::fs::write(
            voc.join(format!("SegmentationClass/{id}.png")),
            m.encode_voc_png().unwrap(),
        )
        .unwrap();
        let name = names.get(class as usize).copied().unwrap_or("sheep");
        std::fs::write(
            voc.join(format!("Annotations/{id}.xml")),
            format!(
                "<annotation><folder>VOC2012</folder><filename>{id}.jpg</filename>\
                 <size><width>64</width><height>48</height><depth>3</depth></size>\
                 <segmented>1</segmented><object><name>{name}</name><difficult>0</difficult>\
                 <bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>\
                 </bndbox></object></annotation>\n",
                x1 + 1,
                y1 + 1
            ),
        )
        .unwrap();
        lists[usize::from(split == "val")].push_str(&format!("{id}\n"));
    }
    std::fs::write(voc.join("ImageSets/Segmentation/train.txt"), &lists[0]).unwrap();
    std::fs::write(voc.join("ImageSets/Segmentation/val.txt"), &lists[1]).unwrap();
    std::fs::write(
        voc.join("ImageSets/Segmentation/trainval.txt"),
        format!("{}{}", lists[0], lists[1]),
    )
    .unwrap();
}

fn vocab(name: &str) -> Vocabulary {
    Vocabulary::load(root().join("configs/vocab").join(name)).unwrap()
}

/// `ovkd pipeline` with the smoke preset; returns its output.
fn pipeline(config: &str, run: &Path, sets: &[String]) -> String {
    let mut args: Vec<&str> = vec![
        "pipeline",
        "--config",
        config,
        "--run",
        s(run),
        "--preset",
        "smoke",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    ok(&args)
}

/// Every AP of `det.json`'s splits is a number in [0, 1] or -1 (no ground truth).
fn check_det(run: &Path, splits: &[&str]) -> Value {
    let det = read_json(&run.join("eval/det.json"));
    for split in splits {
        for k in ["AP", "AP50"] {
            let v = det["splits"][split][k]
                .as_f64()
                .unwrap_or_else(|| panic!("{split}.{k} in {det}"));
            assert!(v == -1.0 || (0.0..=1.0).contains(&v), "{split}.{k} = {v}");
        }
    }
    let dets = read_json(&run.join("eval/detections.json"));
    assert!(dets.is_array(), "{dets}");
    assert!(run.join("eval/det.md").is_file());
    assert!(run.join("report/index.html").is_file());
    det
}

#[test]
fn ov_coco_vild_runs_every_stage_on_a_coco_2017_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let coco = tmp.path().join("coco");
    coco_sample(&coco);
    let clip = tiny_clip(tmp.path(), &[&vocab("ov-coco.toml")]);
    let run = tmp.path().join("run");
    let out = pipeline(
        "configs/ov-coco-vild.toml",
        &run,
        &[
            format!("paths.coco={}", s(&coco)),
            format!("paths.clip={}", s(&clip)),
        ],
    );
    for stage in [
        "data",
        "teacher",
        "proposals",
        "embed",
        "train-detector",
        "eval",
        "report",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(stage)),
            "{stage} missing:\n{out}"
        );
    }
    let info = read_json(&run.join("data/dataset.json"));
    assert_eq!(info["source"], "coco");
    assert_eq!(
        info["splits"]["train"]["annotations"], 3,
        "airplane is novel"
    );
    assert_eq!(
        info["splits"]["val"]["annotations"], 2,
        "hair drier is not OV-COCO's"
    );
    let det = check_det(&run, &["base", "novel", "all"]);
    assert!(det["stats"]["AP50"].is_number(), "{det}");
    let resolved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        resolved.contains(&format!("root = \"{}\"", s(&coco))) && !resolved.contains("${paths"),
        "the paths are substituted in the run's config:\n{resolved}"
    );
    assert!(
        std::fs::read_dir(run.join("eval/det_vis")).unwrap().count() >= 1,
        "val images drawn"
    );
}

#[test]
fn ov_coco_baron_runs_every_stage_on_a_coco_2017_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let coco = tmp.path().join("coco");
    coco_sample(&coco);
    let clip = tiny_clip(tmp.path(), &[&vocab("ov-coco.toml")]);
    let run = tmp.path().join("run");
    pipeline(
        "configs/ov-coco-baron.toml",
        &run,
        &[
            format!("paths.coco={}", s(&coco)),
            format!("paths.clip={}", s(&clip)),
        ],
    );
    check_det(&run, &["base", "novel", "all"]);
    let resolved = std::fs::read_to_string(run.join("detector.toml")).unwrap();
    assert!(resolved.contains("method = \"baron\""), "{resolved}");
}

#[test]
fn ov_lvis_vild_runs_every_stage_on_an_lvis_v1_sample_under_lvis_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let (lvis, coco) = (tmp.path().join("lvis"), tmp.path().join("coco"));
    let v = lvis_sample(&lvis, &coco);
    let clip = tiny_clip(tmp.path(), &[&v]);
    let run = tmp.path().join("run");
    pipeline(
        "configs/ov-lvis-vild.toml",
        &run,
        &[
            format!("paths.lvis={}", s(&lvis)),
            format!("paths.coco={}", s(&coco)),
            format!("paths.clip={}", s(&clip)),
        ],
    );
    let prepared = Vocabulary::load(run.join("data/vocab.toml")).unwrap();
    assert_eq!(
        (prepared.base().count(), prepared.novel().count()),
        (2, 1),
        "frequent + common base, rare novel"
    );
    let train = read_json(&run.join("data/train/instances.json"));
    assert_eq!(
        train["annotations"].as_array().unwrap().len(),
        2,
        "the rare class lost its train box"
    );
    let det = check_det(&run, &["base", "novel", "all"]);
    assert!(
        det["stats"]["APr"].is_number(),
        "scored with LVIS's rules (AP of rare classes): {det}"
    );
    let md = std::fs::read_to_string(run.join("eval/det.md")).unwrap();
    assert!(md.contains("LVIS rules"), "{md}");
}

#[test]
fn voc_zs_lseg_runs_every_stage_on_a_vocdevkit_sample_and_reports_drawings() {
    let tmp = tempfile::tempdir().unwrap();
    let devkit = tmp.path().join("VOCdevkit");
    voc_sample(&devkit);
    let clip = tiny_clip(tmp.path(), &[&vocab("voc-zs.toml")]);
    let run = tmp.path().join("run");
    let out = pipeline(
        "configs/voc-zs-lseg.toml",
        &run,
        &[
            format!("paths.voc={}", s(&devkit)),
            format!("paths.clip={}", s(&clip)),
            // The tiny teacher's joint embedding size.
            "segmenter.segmenter.embed_dim=32".into(),
        ],
    );
    for stage in ["data", "teacher", "train-segmenter", "eval", "report"] {
        assert!(
            out.lines().any(|l| l.starts_with(stage)),
            "{stage} missing:\n{out}"
        );
    }
    // Training never sees the unseen class: sheep pixels are ignored in train, kept in val.
    let t = SemanticMask::read(run.join("data/train/semantic/2007_000063.png")).unwrap();
    assert!(!t.as_slice().contains(&17) && t.as_slice().contains(&255));
    let v = SemanticMask::read(run.join("data/val/semantic/2007_000042.png")).unwrap();
    assert!(v.as_slice().contains(&17));

    let seg = read_json(&run.join("eval/seg.json"));
    for k in ["mIoU", "seen_mIoU", "unseen_mIoU", "hIoU"] {
        let x = seg[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k} missing in {seg}"));
        assert!((0.0..=1.0).contains(&x), "{k} = {x}");
    }
    // Both val images drawn (ground truth | prediction), with the colours' legend.
    let vis = run.join("eval/seg_vis");
    for id in ["2007_000033", "2007_000042"] {
        let sheet = image::open(vis.join(format!("{id}.png"))).unwrap();
        assert!(sheet.width() > 2 * 64, "two enlarged panels side by side");
    }
    let legend = read_json(&vis.join("legend.json"));
    let names: Vec<&str> = legend
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"aeroplane") && names.contains(&"sheep"),
        "{legend}"
    );
    let html = std::fs::read_to_string(run.join("report/index.html")).unwrap();
    assert!(
        html.contains("Segmentations of val images")
            && html.contains("segvis_2007_000042.png")
            && html.contains("sheep <small>unseen</small>"),
        "{html}"
    );
    assert!(run.join("report/segvis_2007_000033.png").is_file());
    if std::env::var_os("OVKD_KEEP_RUN").is_some() {
        // For looking at the report in a browser.
        println!("kept {}", s(&run));
        let _ = tmp.keep();
    }
}

#[test]
fn the_real_data_configs_validate_at_full_size_and_a_missing_download_is_named() {
    for config in [
        "configs/ov-coco-vild.toml",
        "configs/ov-lvis-vild.toml",
        "configs/voc-zs-lseg.toml",
    ] {
        let out = ok(&["pipeline", "--config", config, "--list"]);
        assert!(out.contains("data") && out.contains("eval"), "{out}");
    }
    let out = ok(&[
        "pipeline",
        "--config",
        "configs/ov-coco-vild.toml",
        "--list",
    ]);
    assert!(out.contains("runs/ov-coco-vild"), "{out}");

    let tmp = tempfile::tempdir().unwrap();
    let nowhere = tmp.path().join("nowhere");
    let (success, text) = ovkd(&[
        "pipeline",
        "--config",
        "configs/ov-coco-vild.toml",
        "--run",
        s(&tmp.path().join("run")),
        "--set",
        &format!("paths.coco={}", s(&nowhere)),
    ]);
    assert!(!success);
    assert!(
        text.contains("instances_train2017.json") && text.contains(s(&nowhere)),
        "{text}"
    );
}
