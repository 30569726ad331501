//! Times the pieces of one pre-training step (patch embedding, encoder block parts, text
//! tower) at the default preset, to see where a step's time goes:
//! `cargo run --release -p ovkd-teacher --example op_profile`.
use std::time::Instant;

use burn::module::Param;
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use ovkd_teacher::clip::{Activation, ClipModel};
use ovkd_teacher::pretrain::PretrainConfig;

fn time<F: FnMut()>(name: &str, reps: usize, mut f: F) {
    f();
    let t = Instant::now();
    for _ in 0..reps {
        f();
    }
    println!(
        "{name:<40} {:8.1} ms",
        1e3 * t.elapsed().as_secs_f64() / reps as f64
    );
}

fn main() {
    let dev = Device::default();
    let ad = dev.clone().autodiff();
    let b = 128;
    let cfg = PretrainConfig::preset("default").unwrap();
    let cc = cfg.clip_config(200, 198, 199);
    let _ = Activation::QuickGelu;
    let model = ClipModel::random(&cc, 0, &ad).unwrap();
    let px = Tensor::<4>::random([b, 3, 64, 64], Distribution::Normal(0.0, 1.0), &ad);
    let w = Param::from_tensor(Tensor::<4>::random(
        [128, 3, 8, 8],
        Distribution::Normal(0.0, 0.02),
        &ad,
    ));
    time("patch conv fwd", 3, || {
        let y = conv2d(
            px.clone(),
            w.val(),
            None,
            ConvOptions::new([8, 8], [0, 0], [1, 1], 1),
        );
        let _ = y.into_data();
    });
    time("patch conv fwd+bwd", 3, || {
        let y = conv2d(
            px.clone(),
            w.val(),
            None,
            ConvOptions::new([8, 8], [0, 0], [1, 1], 1),
        );
        let _ = y.sum().backward();
    });
    time("patch matmul fwd+bwd", 3, || {
        let x = px
            .clone()
            .reshape([b, 3, 8, 8, 8, 8])
            .permute([0, 2, 4, 1, 3, 5])
            .reshape([b * 64, 192]);
        let y = x.matmul(w.val().reshape([128, 192]).transpose());
        let _ = y.sum().backward();
    });
    let x = Tensor::<3>::random([b, 65, 128], Distribution::Normal(0.0, 1.0), &ad);
    let layer = &model.vision_model.layers[0];
    time("vision layer fwd", 3, || {
        let _ = layer.forward(x.clone(), false).into_data();
    });
    time("vision layer fwd+bwd", 3, || {
        let _ = layer.forward(x.clone(), false).sum().backward();
    });
    time("attention fwd+bwd", 3, || {
        let _ = layer.self_attn.forward(x.clone(), false).sum().backward();
    });
    time("mlp fwd+bwd", 3, || {
        let _ = layer.mlp.forward(x.clone()).sum().backward();
    });
    time("layernorm fwd+bwd", 3, || {
        let _ = layer.layer_norm1.forward(x.clone()).sum().backward();
    });
    let x2 = Tensor::<2>::random([b * 65, 128], Distribution::Normal(0.0, 1.0), &ad);
    time("fc1 matmul fwd+bwd", 3, || {
        let _ = layer.mlp.fc1.forward(x2.clone()).sum().backward();
    });
    let h = Tensor::<2>::random([b * 65, 512], Distribution::Normal(0.0, 1.0), &ad);
    time("quick_gelu fwd+bwd [8320,512]", 3, || {
        let _ = ovkd_teacher::clip::layers::quick_gelu(h.clone())
            .sum()
            .backward();
    });
    time("gelu fwd+bwd [8320,512]", 3, || {
        let _ = burn::tensor::activation::gelu(h.clone()).sum().backward();
    });
    let s = Tensor::<4>::random([b, 4, 65, 65], Distribution::Normal(0.0, 1.0), &ad);
    time("softmax fwd+bwd [128,4,65,65]", 3, || {
        let _ = burn::tensor::activation::softmax(s.clone(), 3)
            .sum()
            .backward();
    });
    let ids: Vec<i64> = (0..60 * 20).map(|i| (i % 190) as i64).collect();
    time("text tower fwd+bwd 60x20", 3, || {
        let _ = model.text_features(&ids, 60, 20).sum().backward();
    });
    time("full image fwd+bwd", 2, || {
        let _ = model.image_features(px.clone()).sum().backward();
    });
    let m = matmul_bench(&dev);
    println!("plain matmul GFLOP/s {m:.1}");
}

fn matmul_bench(dev: &Device) -> f64 {
    let a = Tensor::<2>::random([8320, 128], Distribution::Normal(0.0, 1.0), dev);
    let w = Tensor::<2>::random([128, 512], Distribution::Normal(0.0, 1.0), dev);
    let _ = a.clone().matmul(w.clone()).into_data();
    let t = Instant::now();
    for _ in 0..5 {
        let _ = a.clone().matmul(w.clone()).into_data();
    }
    5.0 * 2.0 * 8320.0 * 128.0 * 512.0 / t.elapsed().as_secs_f64() / 1e9
}
