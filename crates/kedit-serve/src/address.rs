//! Where the server may listen. The page edits the model and hands out its edits to
//! whoever reaches it, with no authentication: loopback only, unless asked for explicitly.

use std::net::SocketAddr;

/// The default address: this machine only.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7860";

/// `Ok(None)` for a loopback address; for any other, an error unless `allow_remote`, and
/// then `Ok(Some(warning))` for the caller to show.
pub fn check_bind(addr: SocketAddr, allow_remote: bool) -> Result<Option<String>, String> {
    if addr.ip().is_loopback() {
        return Ok(None);
    }
    if !allow_remote {
        return Err(format!(
            "refusing to listen on {addr}: not a loopback address, and the page lets anyone \
             who reaches it edit the model and download its edits; pass --allow-remote to \
             listen there anyway"
        ));
    }
    Ok(Some(format!(
        "listening on {addr}, a non-loopback address: anyone who can reach it can edit the \
         model and download its edits (there is no authentication)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_addresses_need_no_flag() {
        for a in [
            "127.0.0.1:7860",
            "127.0.0.1:0",
            "127.1.2.3:80",
            "[::1]:7860",
        ] {
            assert_eq!(check_bind(addr(a), false), Ok(None), "{a}");
        }
        assert_eq!(check_bind(addr(DEFAULT_ADDR), false), Ok(None));
    }

    #[test]
    fn other_addresses_are_refused_without_the_flag_and_warned_about_with_it() {
        for a in [
            "0.0.0.0:7860",
            "192.168.1.5:7860",
            "[::]:7860",
            "10.0.0.1:1",
        ] {
            let err = check_bind(addr(a), false).unwrap_err();
            assert!(err.contains("--allow-remote"), "{err}");
            let warning = check_bind(addr(a), true).unwrap().expect("a warning");
            assert!(warning.contains("non-loopback"), "{warning}");
        }
    }
}
