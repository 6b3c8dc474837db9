//! Peak resident memory per edit, from Linux's `/proc/self/status` (`VmHWM`, the
//! high-water mark of the resident set). Writing `5` to `/proc/self/clear_refs` resets the
//! mark to the current resident size, so the mark read after an edit is that edit's peak.
//! Elsewhere (or if /proc is not readable) the figures are `None`.

/// Resets the resident high-water mark; false where that is not possible.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The resident high-water mark in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_hwm(&status)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm_in_kib() {
        assert_eq!(
            parse_vm_hwm("Name:\tx\nVmHWM:\t  1024 kB\nVmRSS:\t 9 kB\n"),
            Some(1024 * 1024)
        );
        assert_eq!(parse_vm_hwm("Name:\tx\n"), None);
    }
}
