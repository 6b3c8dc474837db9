//! Seeded mutators: of raw bytes (bit flips, truncation, length fields set to huge values)
//! and of parsed JSON values (dropped fields, wrong types, huge numbers, NaN-like strings,
//! empty strings, deep nesting, huge arrays).

use serde_json::{json, Map, Value};

use crate::rng::Rng;

/// A number in `0..n` (`n > 0`).
pub fn below(rng: &mut Rng, n: usize) -> usize {
    (rng.next_u64() % n.max(1) as u64) as usize
}

/// True with probability `p`.
pub fn chance(rng: &mut Rng, p: f64) -> bool {
    rng.uniform() < p
}

/// Integers that break arithmetic: zero, one, boundaries, huge values.
pub fn nasty_u64(rng: &mut Rng) -> u64 {
    const V: [u64; 16] = [
        0,
        1,
        2,
        3,
        7,
        255,
        65_535,
        (1 << 31) - 1,
        1 << 31,
        u32::MAX as u64,
        1 << 32,
        1 << 40,
        1_000_000_000,
        1_000_000_000_000,
        i64::MAX as u64,
        u64::MAX,
    ];
    if chance(rng, 0.8) {
        V[below(rng, V.len())]
    } else {
        rng.next_u64() >> below(rng, 64)
    }
}

/// Floats that break arithmetic.
pub fn nasty_f64(rng: &mut Rng) -> f64 {
    const V: [f64; 14] = [
        0.0,
        -0.0,
        -1.0,
        1.0,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        1e-300,
        1e300,
        f64::MIN_POSITIVE,
        f64::MAX,
        -1e30,
        0.5,
        1e12,
    ];
    V[below(rng, V.len())]
}

/// One random change to `bytes`.
pub fn bytes(rng: &mut Rng, b: &mut Vec<u8>) {
    if b.is_empty() {
        b.push(rng.next_u64() as u8);
        return;
    }
    let at = below(rng, b.len());
    match below(rng, 9) {
        0 => b[at] ^= 1 << below(rng, 8),
        1 => b[at] = rng.next_u64() as u8,
        2 => b.truncate(at),
        3 => {
            // A length field (u32 or u64, little-endian) set to a nasty value.
            let v = nasty_u64(rng).to_le_bytes();
            let w = if chance(rng, 0.5) { 4 } else { 8 };
            for (i, x) in v.iter().take(w).enumerate() {
                if let Some(slot) = b.get_mut(at + i) {
                    *slot = *x;
                }
            }
        }
        4 => {
            let n = 1 + below(rng, 16);
            let junk: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            b.splice(at..at, junk);
        }
        5 => {
            let end = (at + 1 + below(rng, 64)).min(b.len());
            b.drain(at..end);
        }
        6 => {
            let end = (at + 1 + below(rng, 64)).min(b.len());
            let chunk = b[at..end].to_vec();
            let to = below(rng, b.len());
            b.splice(to..to, chunk);
        }
        7 => {
            // Invalid UTF-8.
            let bad: &[u8] = [
                &[0xff][..],
                &[0xc3][..],
                &[0xed, 0xa0, 0x80][..],
                &[0x80][..],
            ][below(rng, 4)];
            b.splice(at..at, bad.iter().copied());
        }
        _ => b[at] = [0, 0xff, b'"', b'{', b'[', b'-', b'9', b'\n'][below(rng, 8)],
    }
}

/// A value of some other kind than expected.
pub fn nasty_value(rng: &mut Rng) -> Value {
    match below(rng, 16) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(nasty_u64(rng)),
        3 => json!(-(below(rng, 1000) as i64) - 1),
        4 => {
            let f = nasty_f64(rng);
            if f.is_finite() {
                json!(f)
            } else {
                json!(f.to_string())
            }
        }
        5 => json!(["NaN", "nan", "inf", "-inf", "Infinity", "1e999"][below(rng, 6)]),
        6 => json!(""),
        7 => json!("x".repeat(below(rng, 5000))),
        8 => json!([]),
        9 => json!({}),
        10 => {
            // Deep nesting.
            let depth = 1 + below(rng, 300);
            let mut v = json!(1);
            for _ in 0..depth {
                v = json!([v]);
            }
            v
        }
        11 => Value::Array(vec![json!("a"); below(rng, 20_000)]),
        12 => json!("\u{0}\u{feff}\u{202e}ünïcødé 𝔘"),
        13 => json!(1e300),
        14 => json!(0.0),
        _ => json!([nasty_u64(rng), "two", null]),
    }
}

/// The paths (keys / indices) of every node of `v`, at most `limit`.
fn paths(v: &Value, at: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>, limit: usize) {
    if out.len() >= limit {
        return;
    }
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                at.push(PathStep::Key(k.clone()));
                paths(x, at, out, limit);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate().take(64) {
                at.push(PathStep::Index(i));
                paths(x, at, out, limit);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn node<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut cur = v;
    for step in path {
        cur = match step {
            PathStep::Key(k) => cur.get_mut(k.as_str())?,
            PathStep::Index(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

/// One random structural change to `v`: a node replaced, dropped, duplicated or its type
/// changed; a key added; a number made nasty.
pub fn json_value(rng: &mut Rng, v: &mut Value) {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all, 4096);
    let path = all[below(rng, all.len())].clone();
    let op = below(rng, 8);
    if op == 0 && !path.is_empty() {
        // Drop the node from its parent.
        let (last, parent) = path.split_last().expect("not empty");
        if let Some(p) = node(v, parent) {
            match (p, last) {
                (Value::Object(m), PathStep::Key(k)) => {
                    m.shift_remove(k);
                }
                (Value::Array(a), PathStep::Index(i)) if *i < a.len() => {
                    a.remove(*i);
                }
                _ => {}
            }
        }
        return;
    }
    let Some(target) = node(v, &path) else {
        return;
    };
    match op {
        1 | 2 => *target = nasty_value(rng),
        3 => {
            // Keep the kind, break the value.
            *target = match target {
                Value::Number(_) => {
                    if chance(rng, 0.5) {
                        json!(nasty_u64(rng))
                    } else {
                        let f = nasty_f64(rng);
                        if f.is_finite() {
                            json!(f)
                        } else {
                            json!(-1)
                        }
                    }
                }
                Value::String(s) => match below(rng, 4) {
                    0 => json!(""),
                    1 => json!(format!("{s}{s}../../etc/passwd")),
                    2 => json!(["NaN", "/abs/path", "..", "\u{0}"][below(rng, 4)]),
                    _ => json!(s.chars().rev().collect::<String>()),
                },
                Value::Bool(b) => json!(!*b),
                Value::Array(a) => {
                    if a.is_empty() || chance(rng, 0.3) {
                        json!([])
                    } else {
                        // Huge array of one element repeated, within the size bound.
                        let x = a[0].clone();
                        let most = MAX_DOCUMENT_BYTES / json_size(&x).max(1);
                        let n = (1 + below(rng, 5000)).min(most.max(1) as usize);
                        Value::Array(vec![x; n])
                    }
                }
                Value::Object(m) => {
                    let mut m2 = Map::new();
                    if let Some((k, x)) = m.iter().next() {
                        m2.insert(k.clone(), x.clone());
                    }
                    Value::Object(m2)
                }
                Value::Null => nasty_value(rng),
            }
        }
        4 => {
            if let Value::Object(m) = target {
                let key = ["", "__proto__", "weight_map", "alg_name", "layers", "x"][below(rng, 6)];
                m.insert(key.to_string(), nasty_value(rng));
            } else {
                *target = json!({ "value": target.clone() });
            }
        }
        5 => *target = json!([target.clone()]),
        6 => {
            if let Value::Array(a) = target {
                if let Some(x) = a.first().cloned() {
                    a.push(x);
                }
            } else {
                *target = json!(target.to_string());
            }
        }
        _ => *target = Value::Null,
    }
}

/// The most bytes a mutated document may take as compact JSON: repeated mutations
/// (huge arrays of deeply nested arrays) would otherwise grow it without bound.
pub const MAX_DOCUMENT_BYTES: u64 = 1 << 20;

/// The size of `v` as compact JSON, counted without building it.
pub fn json_size(v: &Value) -> u64 {
    struct Count(u64);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len() as u64;
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    serde_json::to_writer(&mut c, v).expect("JSON values serialise");
    c.0
}

/// `v` mutated `1..=max` times; a mutation that takes it over [`MAX_DOCUMENT_BYTES`] is
/// undone.
pub fn json_many(rng: &mut Rng, v: &mut Value, max: usize) {
    for _ in 0..1 + below(rng, max) {
        let before = v.clone();
        json_value(rng, v);
        if json_size(v) > MAX_DOCUMENT_BYTES {
            *v = before;
        }
    }
}
