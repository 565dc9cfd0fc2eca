//! Shared helpers of the eval_* integration tests (`use byol_tests::eval_common as common;`);
//! its own tests check the helpers.

/// Small deterministic generator (xorshift64*), so the tests need no rand dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n
    }
}

/// Gaussian blobs around `centres` (class i % classes for row i), unit noise.
pub fn blobs(rng: &mut Rng, n: usize, centres: &[Vec<f64>]) -> (Vec<f32>, Vec<usize>) {
    let (classes, d) = (centres.len(), centres[0].len());
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let c = i % classes;
        y.push(c);
        for &centre in &centres[c] {
            x.push((centre + rng.normal()) as f32);
        }
    }
    (x, y)
}

/// `classes` random centres at distance `sep` from the origin.
pub fn centres(rng: &mut Rng, d: usize, classes: usize, sep: f64) -> Vec<Vec<f64>> {
    (0..classes)
        .map(|_| {
            let v: Vec<f64> = (0..d).map(|_| rng.normal()).collect();
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.iter().map(|a| a / n * sep).collect()
        })
        .collect()
}

pub fn fixture(name: &str) -> serde_json::Value {
    let path = crate::fixture(&format!("metrics/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json")
}

pub fn f32s(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn i8s(v: &serde_json::Value) -> Vec<i8> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i8)
        .collect()
}

pub fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

#[test]
fn helpers_are_sane() {
    let mut rng = Rng::new(1);
    let v: Vec<f64> = (0..20000).map(|_| rng.normal()).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / v.len() as f64;
    assert!(
        mean.abs() < 0.03 && (var - 1.0).abs() < 0.05,
        "{mean} {var}"
    );
    assert!((0..100).all(|_| rng.below(7) < 7));
    let c = centres(&mut rng, 4, 3, 5.0);
    let (x, y) = blobs(&mut rng, 30, &c);
    assert_eq!((x.len(), y.len()), (120, 30));
    for name in [
        "classification.json",
        "ap.json",
        "miou.json",
        "logistic.json",
        "svm.json",
    ] {
        let f = fixture(name);
        assert!(f["sklearn"].is_string(), "{name}");
    }
    let s = fixture("svm.json");
    assert_eq!(f32s(&s["x"]).len(), f64s(&s["x"]).len());
    assert_eq!(i8s(&s["y"]).len() * 12, f32s(&s["x"]).len());
    assert_eq!(usizes(&s["folds"]).len(), 40);
}
