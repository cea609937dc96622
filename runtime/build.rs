//! Embeds every `contracts/events/<type>/schema.json` of the workspace into the runtime, so a
//! function binary carries the contracts it was built against.

use std::{env, fs, path::PathBuf};

fn main() {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../contracts/events");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut entries: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(dir) = fs::read_dir(&root) {
        for entry in dir.flatten() {
            let schema = entry.path().join("schema.json");
            println!("cargo:rerun-if-changed={}", schema.display());
            if schema.is_file() {
                entries.push((entry.file_name().to_string_lossy().into_owned(), schema));
            }
        }
    }
    entries.sort();
    let mut out = String::from("pub(crate) static EMBEDDED: &[(&str, &str)] = &[\n");
    for (ty, path) in &entries {
        let path = path.canonicalize().expect("schema path resolves");
        out.push_str(&format!(
            "    ({ty:?}, include_str!({:?})),\n",
            path.display().to_string()
        ));
    }
    out.push_str("];\n");
    let dest = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("contracts.rs");
    fs::write(dest, out).expect("OUT_DIR is writable");
}
