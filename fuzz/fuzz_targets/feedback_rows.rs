//! The feedback readers and normalisers: the input's first byte picks the container
//! (JSONL, CSV, Parquet), the rest is the file; every row is normalised in every format.
//! Any input gives rows, rejects or an error, never a panic.
#![no_main]

use std::io::Write;

use hone::feedback::{FileType, Format, formats, read};
use libfuzzer_sys::fuzz_target;

const FORMATS: [Format; 5] = [
    Format::Hone,
    Format::TrlPreference,
    Format::TrlUnpaired,
    Format::HhRlhf,
    Format::Ultrafeedback,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let file_type = match which % 3 {
        0 => FileType::Jsonl,
        1 => FileType::Csv,
        _ => FileType::Parquet,
    };
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(body).expect("written");
    let Ok(rows) = read::rows(file.path(), file_type) else {
        return;
    };
    for (n, (row, parsed)) in rows.enumerate() {
        if n > 10_000 {
            break;
        }
        let Ok(fields) = parsed else { continue };
        for format in FORMATS {
            let _ = formats::normalize(format, &fields, row, Some("fuzz"));
        }
    }
});
