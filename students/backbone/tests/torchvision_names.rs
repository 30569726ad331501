//! Parameter names and shapes against torchvision's state dicts (`tests/fixtures/
//! torchvision_keys.json`, made by `bench/reference/make_detector_fixtures.py`): every
//! torchvision tensor has exactly one counterpart here, of the same shape, through
//! [`ovkd_backbone::torchvision_key`].

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use ovkd_backbone::{BackboneConfig, ResNetConfig, torchvision_key};

#[derive(Default)]
struct Names {
    path: Vec<String>,
    found: BTreeMap<String, Vec<usize>>,
}

impl ModuleVisitor for Names {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let key = torchvision_key(&self.path.join("."));
        let shape = param.val().dims().to_vec();
        assert!(
            self.found.insert(key.clone(), shape).is_none(),
            "duplicate key {key}"
        );
    }
}

fn names<M: Module>(m: &M) -> BTreeMap<String, Vec<usize>> {
    let mut v = Names::default();
    m.visit(&mut v);
    v.found
}

fn expected(model: &str) -> BTreeMap<String, Vec<usize>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/torchvision_keys.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture");
    let all: BTreeMap<String, BTreeMap<String, Vec<usize>>> =
        serde_json::from_str(&text).expect("fixture json");
    all[model].clone()
}

#[test]
fn resnet18_names_and_shapes_match_torchvision() {
    let device = Device::default();
    let net = ResNetConfig::resnet18().init(&device).unwrap();
    assert_eq!(names(&net), expected("resnet18"));
}

#[test]
fn resnet50_fpn_names_and_shapes_match_torchvision_detection_backbone() {
    let device = Device::default();
    let bb = BackboneConfig::resnet50_fpn().init(&device).unwrap();
    assert_eq!(names(&bb), expected("resnet50_fpn"));
}

#[test]
fn trainable_batch_norm_names_map_too() {
    let device = Device::default();
    let cfg = ResNetConfig {
        norm: ovkd_backbone::NormKind::Batch,
        ..ResNetConfig::resnet18()
    };
    let got: Vec<String> = names(&cfg.init(&device).unwrap()).into_keys().collect();
    let want: Vec<String> = expected("resnet18").into_keys().collect();
    assert_eq!(got, want);
}
