//! Adam, as PyTorch's `torch.optim.Adam` (L2 weight decay added to the gradient).

use candle_core::{Tensor, Var};

use crate::error::Result;

pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: i32,
    state: Vec<(Var, Tensor, Tensor)>,
}

impl Adam {
    pub fn new(vars: Vec<Var>, lr: f64, weight_decay: f64) -> Result<Self> {
        let state = vars
            .into_iter()
            .map(|v| {
                let z = v.zeros_like()?;
                Ok((v, z.clone(), z))
            })
            .collect::<Result<_>>()?;
        Ok(Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            step: 0,
            state,
        })
    }

    /// Steps taken and each variable's first and second moments, in the order given to
    /// [`Adam::new`] (saved with a checkpoint so that training resumes exactly).
    pub fn moments(&self) -> (i32, Vec<(Tensor, Tensor)>) {
        let m = self
            .state
            .iter()
            .map(|(_, m, v)| (m.clone(), v.clone()))
            .collect();
        (self.step, m)
    }

    /// Restores what [`moments`](Self::moments) returned.
    pub fn restore(&mut self, step: i32, moments: Vec<(Tensor, Tensor)>) -> Result<()> {
        if moments.len() != self.state.len() {
            return Err(crate::error::Error::invalid(format!(
                "the optimiser state has {} variables; {} are trained",
                moments.len(),
                self.state.len()
            )));
        }
        for ((var, m, v), (m2, v2)) in self.state.iter_mut().zip(moments) {
            if m2.dims() != var.dims() || v2.dims() != var.dims() {
                return Err(crate::error::Error::invalid(format!(
                    "the optimiser state has moments of shape {:?} for a variable of shape {:?}",
                    m2.dims(),
                    var.dims()
                )));
            }
            *m = m2;
            *v = v2;
        }
        self.step = step;
        Ok(())
    }

    /// One update from the gradients of `grads` (variables without a gradient are skipped).
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        self.step += 1;
        let bc1 = 1.0 - self.beta1.powi(self.step);
        let bc2 = 1.0 - self.beta2.powi(self.step);
        for (var, m, v) in &mut self.state {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            // A variable's gradient can still reference the graph it was computed through;
            // the moments must not, or each step's graph would live as long as they do.
            let g = g.detach();
            let g = if self.weight_decay != 0.0 {
                (g + (var.as_tensor().detach() * self.weight_decay)?)?
            } else {
                g
            };
            *m = ((&*m * self.beta1)? + (&g * (1.0 - self.beta1))?)?;
            *v = ((&*v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let denom = ((v.clone() / bc2)?.sqrt()? + self.eps)?;
            let update = ((m.clone() / bc1)? / denom)?;
            var.set(&(var.as_tensor() - (update * self.lr)?)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn minimises_a_quadratic() {
        let x = Var::new(&[3.0f64, -2.0], &Device::Cpu).unwrap();
        let mut opt = Adam::new(vec![x.clone()], 0.1, 0.0).unwrap();
        for _ in 0..500 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            opt.step(&loss.backward().unwrap()).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f64>().unwrap();
        assert!(v.iter().all(|x| x.abs() < 1e-2), "{v:?}");
    }
}
