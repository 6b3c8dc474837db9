//! The font for text in pictures: DejaVu Sans, read once from the system.
//!
//! plotters renders text with `ab_glyph` from fonts registered at run time (no fontconfig,
//! no system libraries). `$KEDIT_FONT` names another TrueType file.

use std::sync::OnceLock;

use plotters::style::{register_font, FontStyle};

const CANDIDATES: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
];

/// The family name text is drawn in.
pub const FAMILY: &str = "sans-serif";

/// Whether a font is registered (loading it on first call).
pub fn available() -> bool {
    static LOADED: OnceLock<bool> = OnceLock::new();
    *LOADED.get_or_init(|| {
        let from_env = std::env::var("KEDIT_FONT").ok();
        let registered = from_env
            .iter()
            .map(String::as_str)
            .chain(CANDIDATES)
            .filter_map(|path| std::fs::read(path).ok())
            .any(|bytes| {
                // plotters keeps fonts for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                register_font(FAMILY, FontStyle::Normal, bytes).is_ok()
            });
        registered
    })
}
