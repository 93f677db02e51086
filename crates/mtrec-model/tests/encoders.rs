//! Behavioural tests of the user encoders and AMF: invariance to history padding (padded slots
//! holding arbitrary vectors change nothing), LSTUR's unknown users and long-term masking (An et
//! al. 2019), and AMF's masking of absent fields.
use mtrec_model::Dropout;
use mtrec_model::amf::Amf;
use mtrec_model::user::{LsturMode, UserEncoder, UserEncoderKind};
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

const D: i64 = 8;
const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn all_kinds() -> [(UserEncoderKind, &'static str); 4] {
    [
        (UserEncoderKind::Additive, "additive"),
        (UserEncoderKind::Nrms, "nrms"),
        (UserEncoderKind::lstur(LsturMode::Ini), "lstur-ini"),
        (UserEncoderKind::lstur(LsturMode::Con), "lstur-con"),
    ]
}

/// Lengths of the 4 histories of the padding tests: full, partial, empty, one click.
const LENGTHS: [i64; 4] = [3, 2, 0, 1];
const H: i64 = 3;
const EXTRA: i64 = 5;

/// `real [4, H, d]` histories padded to `width >= H` slots: real slots from `real` (first
/// `LENGTHS[b]`), every padded slot filled by a fresh `pad()`. Returns `(history, mask)`.
fn padded(real: &Tensor, width: i64, pad: impl Fn() -> Tensor) -> (Tensor, Tensor) {
    let mut rows = Vec::new();
    let mut mask = Vec::new();
    for (b, &len) in LENGTHS.iter().enumerate() {
        for t in 0..width {
            let real_slot = t < len;
            rows.push(if real_slot { real.get(b as i64).get(t) } else { pad() });
            mask.push(real_slot);
        }
    }
    (Tensor::stack(&rows, 0).view([4, width, -1]), Tensor::from_slice(&mask).view([4, width]))
}

/// The same histories padded to H (zeros) and to H + 5 (random garbage, also in the first H
/// slots' padding) give the same user vectors, for every encoder; and the real slots do matter.
#[test]
fn user_encoders_ignore_padded_history_slots() {
    for (kind, name) in all_kinds() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder = UserEncoder::new(&vs.root(), kind, D, 2, 5);
        let real = Tensor::randn([4, H, D], CPU);
        let users = Tensor::from_slice(&[1i64, 0, 3, 5]);
        let (short, short_mask) = padded(&real, H, || Tensor::zeros([D], CPU));
        let (long, long_mask) = padded(&real, H + EXTRA, || Tensor::randn([D], CPU) * 10.0);
        let a = encoder.forward(&short, &short_mask, &users, &Dropout::Off);
        let b = encoder.forward(&long, &long_mask, &users, &Dropout::Off);
        assert_eq!(a.size(), [4, D], "{name}");
        let diff = max_diff(&a, &b);
        assert!(diff < 1e-5, "{name}: padded slots changed the user vectors by {diff}");
        // The test can fail: the same garbage unmasked does change the vectors.
        let unmasked = encoder.forward(&long, &long_mask.ones_like(), &users, &Dropout::Off);
        assert!(max_diff(&a, &unmasked) > 1e-3, "{name}: the garbage slots are inert even unmasked");
    }
}

/// AMF news vectors of real news in the history, and AMF vectors of garbage news (random titles,
/// categories and entities) in the padded slots: the user vectors are those of the zero-padded
/// history.
#[test]
fn amf_news_vectors_and_user_encoders_ignore_padded_history_slots() {
    for subcategories in [None, Some(4)] {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let amf = Amf::new(&(vs.root() / "amf"), D, 3, subcategories, 6);
        let news = |n: i64| {
            let entity_mask = Tensor::rand([n, 2], CPU).gt(0.5);
            amf.forward(
                &Tensor::randn([n, D], CPU),
                &Tensor::randint(3, [n], (Kind::Int64, Device::Cpu)),
                &Tensor::randint(4, [n], (Kind::Int64, Device::Cpu)),
                &(Tensor::randn([n, 2, 6], CPU) * 5.0),
                &entity_mask,
            )
        };
        let real = news(4 * H).view([4, H, D]);
        for (kind, name) in all_kinds() {
            let encoder = UserEncoder::new(&(vs.root() / name), kind, D, 2, 5);
            let users = Tensor::from_slice(&[2i64, 0, 1, 4]);
            let (short, short_mask) = padded(&real, H, || Tensor::zeros([D], CPU));
            let (long, long_mask) = padded(&real, H + EXTRA, || news(1).view([D]));
            let a = encoder.forward(&short, &short_mask, &users, &Dropout::Off);
            let b = encoder.forward(&long, &long_mask, &users, &Dropout::Off);
            let diff = max_diff(&a, &b);
            assert!(diff < 1e-5, "AMF + {name} (subcategory {subcategories:?}): padding changed {diff}");
        }
    }
}

/// A news item without entities: the entity field gets weight exactly 0, its vector does not
/// depend on what sits in its (masked) entity slots, and it is the attention over the other
/// fields alone. A news item with entities puts positive weight on them.
#[test]
fn amf_masks_the_entity_field_of_news_without_entities() {
    for subcategories in [None, Some(4)] {
        tch::manual_seed(13);
        let vs = nn::VarStore::new(Device::Cpu);
        let amf = Amf::new(&vs.root(), D, 3, subcategories, 6);
        let fields = amf.num_fields();
        assert_eq!(fields, if subcategories.is_some() { 4 } else { 3 });
        let title = Tensor::randn([2, D], CPU);
        let category = Tensor::from_slice(&[0i64, 2]);
        let subcategory = Tensor::from_slice(&[3i64, 1]);
        // News 0 has one entity; news 1 none.
        let entity_mask = Tensor::from_slice(&[true, false, false, false]).view([2, 2]);
        let zeros = Tensor::zeros([2, 2, 6], CPU);
        let garbage = Tensor::randn([2, 2, 6], CPU) * 100.0;
        // Same real entity for news 0 in both; only masked slots differ.
        garbage.get(0).get(0).copy_(&Tensor::ones([6], CPU));
        zeros.get(0).get(0).copy_(&Tensor::ones([6], CPU));
        let a = amf.forward(&title, &category, &subcategory, &zeros, &entity_mask);
        let b = amf.forward(&title, &category, &subcategory, &garbage, &entity_mask);
        let diff = max_diff(&a, &b);
        assert!(
            diff < 1e-6,
            "subcategory {subcategories:?}: masked entity slots changed the vector by {diff}"
        );

        let w = amf.field_weights(&title, &category, &subcategory, &garbage, &entity_mask);
        assert_eq!(w.size(), [2, fields]);
        assert_eq!(w.double_value(&[1, fields - 1]), 0.0, "no entities: weight on the entity field");
        assert!(w.double_value(&[0, fields - 1]) > 0.0, "with an entity: the entity field has weight");
        let sums = w.sum_dim_intlist(-1, false, Kind::Float);
        assert!(max_diff(&sums, &Tensor::ones([2], CPU)) < 1e-6, "weights sum to 1: {sums:?}");

        // Without entities the present fields (title, category[, subcategory]) share all weight.
        let w1 = w.get(1);
        let present_total: f64 = (0..fields - 1).map(|f| w1.double_value(&[f])).sum();
        assert!((present_total - 1.0).abs() < 1e-6, "present fields' weights sum to {present_total}");
    }
}

fn lstur(mode: LsturMode, mask_prob: f64, vs: &nn::VarStore, num_users: i64) -> UserEncoder {
    UserEncoder::new(&vs.root(), UserEncoderKind::Lstur { mode, mask_prob }, D, 2, num_users)
}

fn user_table(encoder: &UserEncoder) -> &Tensor {
    match encoder {
        UserEncoder::Lstur(l) => &l.users.ws,
        _ => panic!("not LSTUR"),
    }
}

/// Unknown users (id 0) get no long-term vector: row 0 starts at zero and never reaches the
/// output (even when something writes into it); the vector equals that of a known user whose
/// embedding row is zero; under LSTUR-con the long-term half is exactly zero.
#[test]
fn lstur_unknown_users_have_no_long_term_vector() {
    for mode in [LsturMode::Ini, LsturMode::Con] {
        tch::manual_seed(17);
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder = lstur(mode, 0.5, &vs, 3);
        let table = user_table(&encoder);
        let width = if mode == LsturMode::Con { D / 2 } else { D };
        assert_eq!(table.size(), [4, width]);
        assert_eq!(table.get(0).abs().max().double_value(&[]), 0.0, "{mode:?}: row 0 starts at zero");
        assert!(table.get(1).abs().max().double_value(&[]) > 0.0);

        let history = Tensor::randn([2, 3, D], CPU);
        let mask = Tensor::from_slice(&[true, true, false, true, false, false]).view([2, 3]);
        let unknown = encoder.forward(&history, &mask, &Tensor::from_slice(&[0i64, 0]), &Dropout::Off);
        if mode == LsturMode::Con {
            let long_half = unknown.narrow(1, D / 2, D / 2);
            assert_eq!(long_half.abs().max().double_value(&[]), 0.0, "con: long-term half of user 0");
            let known = encoder.forward(&history, &mask, &Tensor::from_slice(&[1i64, 2]), &Dropout::Off);
            assert!(known.narrow(1, D / 2, D / 2).abs().max().double_value(&[]) > 0.0);
        }
        // Something writes into row 0 (a stray update, an edited checkpoint): no effect.
        tch::no_grad(|| {
            let _ = table.get(0).fill_(3.0);
        });
        let after = encoder.forward(&history, &mask, &Tensor::from_slice(&[0i64, 0]), &Dropout::Off);
        assert_eq!(max_diff(&unknown, &after), 0.0, "{mode:?}: row 0's value reached the output");
        // A known user whose row is zero gets the unknown user's vector.
        tch::no_grad(|| {
            let _ = table.get(2).zero_();
        });
        let zero_row = encoder.forward(&history, &mask, &Tensor::from_slice(&[2i64, 2]), &Dropout::Off);
        assert!(max_diff(&unknown, &zero_row) < 1e-6, "{mode:?}: id 0 differs from a zero long-term vector");
    }
}

/// Row 0 gets exactly zero gradient (in training, with masking on) and stays exactly zero
/// through AdamW steps with weight decay, while the rows of the known users move.
#[test]
fn lstur_row_zero_gets_no_gradient_and_stays_zero_under_adamw() {
    for mode in [LsturMode::Ini, LsturMode::Con] {
        tch::manual_seed(19);
        let vs = nn::VarStore::new(Device::Cpu);
        let encoder = lstur(mode, 0.5, &vs, 3);
        let table = user_table(&encoder).shallow_clone();
        let before = table.copy();
        let mut optimizer = nn::AdamW::default().wd(0.1).build(&vs, 1e-2).unwrap();
        let history = Tensor::randn([6, 3, D], CPU);
        let mask = Tensor::ones([6, 3], (Kind::Bool, Device::Cpu));
        let users = Tensor::from_slice(&[0i64, 1, 2, 3, 0, 1]);
        let weights = Tensor::randn([6, D], CPU);
        for step in 0..5u64 {
            let dropout = Dropout::training(Device::Cpu, step);
            let loss = (encoder.forward(&history, &mask, &users, &dropout) * &weights).sum(Kind::Float);
            optimizer.zero_grad();
            loss.backward();
            let grad = table.grad();
            assert_eq!(grad.get(0).abs().max().double_value(&[]), 0.0, "{mode:?} step {step}: row 0 grad");
            optimizer.step();
            assert_eq!(table.get(0).abs().max().double_value(&[]), 0.0, "{mode:?} step {step}: row 0 moved");
        }
        let moved = (&table - &before).abs().sum_dim_intlist(-1, false, Kind::Float);
        for user in 1..4 {
            assert!(moved.double_value(&[user]) > 0.0, "{mode:?}: user {user}'s row never trained");
        }
    }
}

/// Long-term masking: with p = 1 every training sample is an unknown user, with p = 0 training
/// equals evaluation, evaluation never masks, and p = 0.5 masks about half the samples,
/// reproducibly per seed.
#[test]
fn lstur_long_term_masking_in_training_only() {
    for mode in [LsturMode::Ini, LsturMode::Con] {
        tch::manual_seed(23);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut encoder = lstur(mode, 1.0, &vs, 4);
        let b = 2000;
        let history = Tensor::randn([b, 2, D], CPU);
        let mask = Tensor::rand([b, 2], CPU).gt(0.3);
        let users = Tensor::randint_low(1, 5, [b], (Kind::Int64, Device::Cpu));
        let unknown = users.zeros_like();
        let eval = encoder.forward(&history, &mask, &users, &Dropout::Off);
        let as_unknown = encoder.forward(&history, &mask, &unknown, &Dropout::Off);
        let set_p = |encoder: &mut UserEncoder, p: f64| match encoder {
            UserEncoder::Lstur(l) => l.mask_prob = p,
            _ => unreachable!(),
        };

        // p = 1: training equals id 0 for everyone; evaluation is unmasked.
        let p1 = encoder.forward(&history, &mask, &users, &Dropout::training(Device::Cpu, 1));
        assert!(max_diff(&p1, &as_unknown) < 1e-6, "{mode:?}: p = 1 differs from id 0");
        assert!(max_diff(&eval, &as_unknown) > 1e-3, "{mode:?}: evaluation masked the long-term part");

        // p = 0: training equals evaluation.
        set_p(&mut encoder, 0.0);
        let p0 = encoder.forward(&history, &mask, &users, &Dropout::training(Device::Cpu, 1));
        assert_eq!(max_diff(&p0, &eval), 0.0, "{mode:?}: p = 0 changed the vectors");

        // p = 0.5: each sample is either the unmasked or the id-0 vector, about half of each;
        // evaluation with p = 0.5 is still unmasked.
        set_p(&mut encoder, 0.5);
        assert_eq!(max_diff(&encoder.forward(&history, &mask, &users, &Dropout::Off), &eval), 0.0);
        let half = encoder.forward(&history, &mask, &users, &Dropout::training(Device::Cpu, 5));
        let is_masked = (&half - &as_unknown).abs().amax(-1, false).lt(1e-6);
        let is_kept = (&half - &eval).abs().amax(-1, false).lt(1e-6);
        assert_eq!(
            is_masked.logical_or(&is_kept).all().int64_value(&[]),
            1,
            "{mode:?}: a sample is neither masked nor kept"
        );
        let share = is_masked.to_kind(Kind::Double).mean(Kind::Double).double_value(&[]);
        assert!((share - 0.5).abs() < 0.05, "{mode:?}: masked share {share}");
        let again = encoder.forward(&history, &mask, &users, &Dropout::training(Device::Cpu, 5));
        assert_eq!(max_diff(&half, &again), 0.0, "{mode:?}: the same seed drew other masks");
        let other = encoder.forward(&history, &mask, &users, &Dropout::training(Device::Cpu, 6));
        assert!(max_diff(&half, &other) > 0.0, "{mode:?}: another seed drew the same masks");
    }
}

/// LSTUR-con's user vector is the concatenation `[u_s; u_l]` of two `d / 2` halves, with no
/// layer after it: the second half is the (unmasked) user embedding itself.
#[test]
fn lstur_con_concatenates_the_short_and_long_term_halves() {
    tch::manual_seed(29);
    let vs = nn::VarStore::new(Device::Cpu);
    let encoder = lstur(LsturMode::Con, 0.5, &vs, 3);
    let names: Vec<String> = vs.variables().into_keys().collect();
    assert!(names.iter().all(|n| n.starts_with("users") || n.starts_with("gru")), "{names:?}");
    let history = Tensor::randn([3, 2, D], CPU);
    let mask = Tensor::ones([3, 2], (Kind::Bool, Device::Cpu));
    let users = Tensor::from_slice(&[3i64, 1, 2]);
    let out = encoder.forward(&history, &mask, &users, &Dropout::Off);
    let rows = user_table(&encoder).index_select(0, &users);
    assert_eq!(max_diff(&out.narrow(1, D / 2, D / 2), &rows), 0.0);
    // The short-term half does not depend on the user (its GRU starts from zeros).
    let other = encoder.forward(&history, &mask, &Tensor::from_slice(&[1i64, 2, 3]), &Dropout::Off);
    assert_eq!(max_diff(&out.narrow(1, 0, D / 2), &other.narrow(1, 0, D / 2)), 0.0);
}

#[test]
#[should_panic(expected = "must be even")]
fn lstur_con_rejects_an_odd_width() {
    let vs = nn::VarStore::new(Device::Cpu);
    let _ = UserEncoder::new(&vs.root(), UserEncoderKind::lstur(LsturMode::Con), 7, 1, 3);
}

/// The config form: `mode` defaults to `ini`, `mask_prob` to 0.5 and must lie in [0, 1).
#[test]
fn lstur_config_defaults_and_rejects_bad_mask_probabilities() {
    let parse = |s: &str| serde_json::from_str::<UserEncoderKind>(s);
    assert_eq!(
        parse(r#"{"kind": "lstur"}"#).unwrap(),
        UserEncoderKind::Lstur { mode: LsturMode::Ini, mask_prob: 0.5 }
    );
    assert_eq!(
        parse(r#"{"kind": "lstur", "mode": "con", "mask_prob": 0.0}"#).unwrap(),
        UserEncoderKind::Lstur { mode: LsturMode::Con, mask_prob: 0.0 }
    );
    for bad in ["1.0", "-0.1", "1.5"] {
        let err = parse(&format!(r#"{{"kind": "lstur", "mask_prob": {bad}}}"#)).unwrap_err().to_string();
        assert!(err.contains("mask_prob"), "{bad}: {err}");
    }
    assert!(parse(r#"{"kind": "lstur", "mask_pro": 0.3}"#).is_err(), "a misspelt field is an error");
    assert_eq!(parse(r#"{"kind": "additive"}"#).unwrap(), UserEncoderKind::Additive);
    let round_trip = serde_json::to_string(&UserEncoderKind::lstur(LsturMode::Con)).unwrap();
    assert_eq!(parse(&round_trip).unwrap(), UserEncoderKind::lstur(LsturMode::Con));
}
