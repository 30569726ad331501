//! An exponential moving average of a module's float parameters (Polyak averaging), kept
//! beside training and swapped in for the weights that are saved. Short runs of small noisy
//! batches end with weights that still move from step to step; their running average is
//! usually a better model than the last iterate.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Tensor;

/// The average of every float parameter, by parameter id, each flattened to [N] on the
/// module's (non-autodiff) device.
#[derive(Debug, Clone, Default)]
pub struct WeightAverage {
    decay: f64,
    updates: usize,
    values: HashMap<ParamId, Tensor<1>>,
}

impl WeightAverage {
    /// An empty average with decay `decay` in [0, 1) per update (the window is about
    /// 1 / (1 - decay) updates).
    pub fn new(decay: f64) -> Self {
        Self {
            decay: decay.clamp(0.0, 1.0),
            updates: 0,
            values: HashMap::new(),
        }
    }

    /// Updates taken so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// The weight of the old average at the next update: `decay`, but smaller over the first
    /// updates ((1 + t) / (10 + t)), so that the random initial weights are forgotten fast.
    pub fn current_decay(&self) -> f64 {
        let t = self.updates as f64;
        self.decay.min((1.0 + t) / (10.0 + t))
    }

    /// Folds `module`'s current parameters (an inference snapshot, e.g. `model.valid()`) into
    /// the average: avg = d avg + (1 - d) value. The first update copies them.
    pub fn update<M: Module>(&mut self, module: &M) {
        let d = if self.updates == 0 {
            0.0
        } else {
            self.current_decay()
        };
        let mut v = Folder {
            values: &mut self.values,
            decay: d,
        };
        module.visit(&mut v);
        self.updates += 1;
    }

    /// `module` with each float parameter that the average holds replaced by its average
    /// (same ids and shapes); parameters it never saw are kept.
    pub fn apply<M: Module>(&self, module: M) -> M {
        let mut m = Swapper {
            values: &self.values,
        };
        module.map(&mut m)
    }
}

struct Folder<'a> {
    values: &'a mut HashMap<ParamId, Tensor<1>>,
    decay: f64,
}

impl ModuleVisitor for Folder<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let v = param.val();
        let n = v.shape().num_elements();
        let flat = v.reshape([n]).detach();
        let next = match self.values.remove(&param.id) {
            Some(old) if self.decay > 0.0 => {
                old.mul_scalar(self.decay) + flat.mul_scalar(1.0 - self.decay)
            }
            _ => flat,
        };
        self.values.insert(param.id, next);
    }
}

struct Swapper<'a> {
    values: &'a HashMap<ParamId, Tensor<1>>,
}

impl ModuleMapper for Swapper<'_> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        match self.values.get(&param.id) {
            Some(avg) => param.map(|t| avg.clone().reshape(t.shape())),
            None => param,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::{Device, TensorData};

    /// A copy of `l` (same parameter ids, as after an optimiser step) with every value `w`.
    fn with_value(l: &Linear, w: f32, device: &Device) -> Linear {
        let weight = Tensor::<2>::from_data(TensorData::new(vec![w, w], [2, 1]), device);
        let bias = Tensor::<1>::from_data(TensorData::new(vec![w], [1]), device);
        Linear {
            weight: Param::initialized(l.weight.id, weight),
            bias: l.bias.as_ref().map(|b| Param::initialized(b.id, bias)),
        }
    }

    fn values(l: &Linear) -> Vec<f32> {
        let mut v = l.weight.val().into_data().try_into_vec::<f32>().unwrap();
        v.extend(
            l.bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap(),
        );
        v
    }

    #[test]
    fn average_follows_the_decay_and_keeps_ids_and_shapes() {
        let device = Device::default();
        let l = LinearConfig::new(2, 1).init(&device);
        let mut avg = WeightAverage::new(0.5);
        // First update copies; then d = min(0.5, 2/11) = 2/11, then min(0.5, 3/12) = 1/4.
        avg.update(&with_value(&l, 1.0, &device));
        avg.update(&with_value(&l, 12.0, &device));
        let want1 = 2.0 / 11.0 * 1.0 + 9.0 / 11.0 * 12.0;
        avg.update(&with_value(&l, 4.0, &device));
        let want2 = 0.25 * want1 + 0.75 * 4.0;
        assert_eq!(avg.updates(), 3);
        let cur = with_value(&l, 100.0, &device);
        let ids = (cur.weight.id, cur.bias.as_ref().unwrap().id);
        let out = avg.apply(cur);
        assert_eq!(out.weight.id, ids.0);
        assert_eq!(out.bias.as_ref().unwrap().id, ids.1);
        assert_eq!(out.weight.val().dims(), [2, 1]);
        for v in values(&out) {
            assert!((v as f64 - want2).abs() < 1e-4, "{v} vs {want2}");
        }
        // The long-run decay wins once the warm-up ratio exceeds it.
        let mut slow = WeightAverage::new(0.9);
        for _ in 0..200 {
            slow.update(&with_value(&l, 0.0, &device));
        }
        assert!((slow.current_decay() - 0.9).abs() < 1e-12);
    }

    #[test]
    fn parameters_the_average_never_saw_are_kept() {
        let device = Device::default();
        let mut avg = WeightAverage::new(0.9);
        avg.update(&with_value(
            &LinearConfig::new(2, 1).init(&device),
            1.0,
            &device,
        ));
        // A module whose parameters have other ids (another model) is left as it is.
        let other = LinearConfig::new(2, 1).init(&device);
        let out = avg.apply(with_value(&other, 3.0, &device));
        assert_eq!(values(&out), vec![3.0, 3.0, 3.0]);
    }
}
