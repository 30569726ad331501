//! The batching service: many callers, batches, and bad requests that fail alone.

mod common;

use std::sync::Arc;

use burn::tensor::Device;
use common::*;
use ovkd_teacher::TeacherError;
use ovkd_teacher::service::{ServiceConfig, TeacherService};

#[test]
fn many_callers_batches_and_isolated_errors() {
    let device = Device::flex();
    let (teacher, _dir) = tiny_teacher(&device);
    let img = Arc::new(image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 6) as u8, (y * 8) as u8, 50])
    }));
    let boxes = vec![
        [2.0, 3.0, 20.0, 25.0],
        [10.0, 0.0, 40.0, 30.0],
        [5.0, 5.0, 9.0, 9.0],
    ];
    let direct = vec2(teacher.region_embeds(&img, &boxes).unwrap());
    let svc = Arc::new(TeacherService::start(
        teacher,
        ServiceConfig {
            max_batch: 16,
            max_wait_ms: 20,
        },
    ));
    let mut handles = Vec::new();
    for k in 0..6 {
        let svc = svc.clone();
        let img = img.clone();
        let boxes = boxes.clone();
        handles.push(std::thread::spawn(move || match k % 3 {
            0 => Ok(svc.regions(&img, &boxes)),
            1 => Err(svc.regions(&img, &[[2.0, 2.0, 2.0, 8.0]])),
            _ => Err(svc.regions(&img, &[[30.0, 20.0, 60.0, 29.0]])),
        }));
    }
    for h in handles {
        match h.join().unwrap() {
            Ok(r) => {
                let r = r.unwrap();
                assert_eq!(r.len(), 3);
                assert!(max_diff(&r.data, &direct) < 1e-5);
            }
            Err(r) => assert!(matches!(r, Err(TeacherError::InvalidRequest(_))), "{r:?}"),
        }
    }
    let empty = image::RgbImage::new(0, 0);
    assert!(svc.regions(&empty, &[[0.0, 0.0, 1.0, 1.0]]).is_err());
    assert!(svc.dense(Arc::new(empty), (32, 32)).is_err());
    assert!(svc.dense(img.clone(), (33, 32)).is_err());
    // The service is still up after all that.
    let again = svc.regions(&img, &boxes).unwrap();
    assert!(max_diff(&again.data, &direct) < 1e-5);
    let d = svc.dense(img.clone(), (32, 24)).unwrap();
    assert_eq!(d.shape, [32, 3, 4]);
    let s = svc.stats();
    assert_eq!(s.crops, 3 * 2 * 3);
    assert!(s.batches >= 2 && s.batches <= 4, "{s:?}");
    assert!(s.crops_per_sec() > 0.0);
}
