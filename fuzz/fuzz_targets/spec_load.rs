//! The spec loader, from bytes to a validated pipeline: any input gives a pipeline or
//! diagnostics, never a panic, a hang or unbounded memory (libFuzzer's limits enforce the
//! last two). Rendering the diagnostics is part of it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    match hone::dag::load_str("fuzz.yaml", text, &[], hone::stages::kinds()) {
        Ok(pipeline) => {
            let _ = pipeline.order.len();
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
