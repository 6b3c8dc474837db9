//! Bounds on every count and number the command line takes, checked while parsing: an
//! absurd value ("--samples 1000000000") is an error naming the option, not minutes of
//! work or an allocation the machine cannot make.

/// A whole number in `lo..=hi`.
pub fn count(
    lo: usize,
    hi: usize,
) -> impl Fn(&str) -> Result<usize, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v: usize = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a whole number"))?;
        if v < lo || v > hi {
            return Err(format!("{v} is out of range: allowed {lo}..={hi}"));
        }
        Ok(v)
    }
}

/// A finite number in `lo..=hi`.
pub fn real(
    lo: f64,
    hi: f64,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let v: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not a number"))?;
        if !v.is_finite() || v < lo || v > hi {
            return Err(format!("{v} is out of range: allowed {lo}..={hi}"));
        }
        Ok(v)
    }
}

/// The most layers any supported model has, with room to spare; layer lists and ranges
/// are checked against the real model later.
pub const MAX_LAYERS: usize = 1024;
/// The most tokens of one sequence (any supported model's context is shorter).
pub const MAX_TOKENS: usize = 1 << 17;
/// The most records of a data file a command will take.
pub const MAX_RECORDS: usize = 10_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_reals_outside_their_range_are_errors() {
        let c = count(1, 10);
        assert_eq!(c("3"), Ok(3));
        assert!(c("0").unwrap_err().contains("1..=10"));
        assert!(c("11").is_err());
        assert!(c("-1").is_err());
        assert!(c("99999999999999999999999").is_err());
        let r = real(0.0, 5.0);
        assert_eq!(r("2.5"), Ok(2.5));
        assert!(r("nan").is_err());
        assert!(r("inf").is_err());
        assert!(r("-0.1").is_err());
    }
}
