//! Finite-difference gradient checks (f64, central differences) of the user encoders and AMF on
//! tiny sizes: autograd must agree with (f(x + h) - f(x - h)) / 2h on inputs and parameters,
//! with padded and empty histories in the batch.
use mtrec_model::Dropout;
use mtrec_model::amf::Amf;
use mtrec_model::user::{LsturMode, UserEncoder, UserEncoderKind};
use tch::{Device, Kind, Tensor, nn};

const H: f64 = 1e-6;
const TOLERANCE: f64 = 1e-6;

/// Compares autograd with central differences for up to 6 entries of each tensor in `wrt`.
fn check(name: &str, wrt: &[Tensor], loss: impl Fn() -> Tensor) {
    for t in wrt {
        t.shallow_clone().zero_grad();
    }
    loss().backward();
    let grads: Vec<Tensor> = wrt.iter().map(|t| t.grad().copy()).collect();
    for (k, (t, grad)) in wrt.iter().zip(&grads).enumerate() {
        let n = t.numel() as i64;
        for j in [0, n / 5, n / 3, n / 2, (2 * n) / 3, n - 1] {
            let flat = t.view([-1]);
            let original = flat.double_value(&[j]);
            let at = |v: f64| {
                tch::no_grad(|| {
                    let _ = flat.get(j).fill_(v);
                });
                loss().double_value(&[])
            };
            let numeric = (at(original + H) - at(original - H)) / (2.0 * H);
            tch::no_grad(|| {
                let _ = flat.get(j).fill_(original);
            });
            let analytic = grad.view([-1]).double_value(&[j]);
            let err = (numeric - analytic).abs() / (1.0 + numeric.abs());
            assert!(err < TOLERANCE, "{name}: tensor {k} entry {j}: autograd {analytic}, numeric {numeric}");
            assert!(analytic.is_finite());
        }
    }
}

/// History `[3, 4, 8]`: row 0 full, row 1 with two padded slots, row 2 empty.
fn history() -> (Tensor, Tensor, Tensor) {
    let x = Tensor::randn([3, 4, 8], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let mask =
        Tensor::from_slice(&[true, true, true, true, false, false, true, true, false, false, false, false])
            .view([3, 4]);
    let users = Tensor::from_slice(&[1i64, 2, 0]);
    (x, mask, users)
}

fn check_user_encoder(kind: UserEncoderKind, name: &str) {
    tch::manual_seed(3);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let encoder = UserEncoder::new(&vs.root(), kind, 8, 2, 3);
    vs.double();
    let (x, mask, users) = history();
    let weights = Tensor::randn([3, 8], (Kind::Double, Device::Cpu));
    let out = encoder.forward(&x, &mask, &users, &Dropout::Off);
    assert!(out.isfinite().all().int64_value(&[]) == 1, "{name}: non-finite output");
    let mut wrt = vec![x.shallow_clone()];
    wrt.extend(vs.trainable_variables());
    check(name, &wrt, || (encoder.forward(&x, &mask, &users, &Dropout::Off) * &weights).sum(Kind::Double));
}

#[test]
fn additive_attention_gradients() {
    check_user_encoder(UserEncoderKind::Additive, "additive");
}

#[test]
fn nrms_gradients() {
    check_user_encoder(UserEncoderKind::Nrms, "nrms");
}

#[test]
fn lstur_ini_gradients() {
    check_user_encoder(UserEncoderKind::lstur(LsturMode::Ini), "lstur-ini");
}

#[test]
fn lstur_con_gradients() {
    check_user_encoder(UserEncoderKind::lstur(LsturMode::Con), "lstur-con");
}

#[test]
fn empty_history_gives_defined_vectors() {
    for kind in [UserEncoderKind::Additive, UserEncoderKind::Nrms, UserEncoderKind::lstur(LsturMode::Con)] {
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder = UserEncoder::new(&vs.root(), kind, 8, 2, 3);
        let x = Tensor::randn([2, 5, 8], (Kind::Float, Device::Cpu));
        let mask = Tensor::zeros([2, 5], (Kind::Bool, Device::Cpu));
        let out = encoder.forward(&x, &mask, &Tensor::from_slice(&[0i64, 1]), &Dropout::Off);
        assert_eq!(out.isnan().sum(Kind::Int64).int64_value(&[]), 0, "{kind:?} gave NaN on an empty history");
    }
}

#[test]
fn amf_gradients() {
    tch::manual_seed(5);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let amf = Amf::new(&vs.root(), 8, 4, Some(5), 6);
    vs.double();
    let title = Tensor::randn([3, 8], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    let entities = Tensor::randn([3, 2, 6], (Kind::Double, Device::Cpu)).set_requires_grad(true);
    // News 2 has no entities at all.
    let entity_mask = Tensor::from_slice(&[true, true, true, false, false, false]).view([3, 2]);
    let category = Tensor::from_slice(&[0i64, 3, 1]);
    let subcategory = Tensor::from_slice(&[4i64, 0, 2]);
    let weights = Tensor::randn([3, 8], (Kind::Double, Device::Cpu));
    let mut wrt = vec![title.shallow_clone(), entities.shallow_clone()];
    wrt.extend(vs.trainable_variables());
    check("amf", &wrt, || {
        (amf.forward(&title, &category, &subcategory, &entities, &entity_mask) * &weights).sum(Kind::Double)
    });
}
