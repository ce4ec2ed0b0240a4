//! The build script of every function: links it with the functions its cold start runs first in
//! `.text`, so that a cold start maps fewer of the executable's pages (README, Cold starts).
//!
//! `hot-text.tsv` beside this file (`make hot-text` derives it) lists the functions the profiled
//! cold starts ran. A function that was profiled gets what it ran in production configuration,
//! then what it ran on the local stores; any other function gets every line, in the table's order.
//! The script is written to `OUT_DIR` and passed to the linker for the Lambda builds only: the
//! arm64 target, and the x86_64 bench build (`CRM_SYNC_HOT_TEXT=1`, set by the Makefile).

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let table = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("../hot-text.tsv");
    println!("cargo:rerun-if-changed={}", table.display());
    println!("cargo:rerun-if-env-changed=CRM_SYNC_HOT_TEXT");
    let target = env::var("TARGET").unwrap_or_default();
    let lambda_build = target == "aarch64-unknown-linux-gnu"
        || env::var("CRM_SYNC_HOT_TEXT").is_ok_and(|v| v == "1");
    if !lambda_build || env::var("CARGO_CFG_TARGET_OS").as_deref() != Ok("linux") {
        return;
    }
    let table = fs::read_to_string(&table)
        .unwrap_or_else(|e| panic!("{}: {e} (make hot-text writes it)", table.display()));
    let function = env::var("CARGO_PKG_NAME").expect("set by cargo");
    let mut column = None;
    let mut ranked = Vec::new();
    for line in table.lines() {
        if let Some(functions) = line.strip_prefix("# functions\t") {
            column = functions.split('\t').position(|f| f == function);
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (pattern, flags) = line
            .split_once('\t')
            .unwrap_or_else(|| panic!("hot-text.tsv: not a pattern and flags: {line}"));
        let rank = match column.map(|c| flags.as_bytes().get(c)) {
            None => 0,
            Some(Some(b'p')) => 0,
            Some(Some(b'l')) => 1,
            Some(_) => continue,
        };
        ranked.push((rank, pattern));
    }
    // One input-section description a rank: the linker passes over every input section once a
    // description, so a description a pattern added half a minute to each link. Within a rank the
    // functions keep the order of their object files.
    let mut script = String::from(
        "/* Written by functions/hot-text.rs from functions/hot-text.tsv. */\nSECTIONS {\n  .text.hot : {\n",
    );
    for rank in [0, 1] {
        let patterns: Vec<String> = ranked
            .iter()
            .filter(|(r, _)| *r == rank)
            .map(|(_, p)| format!("      .text.{p} .text.unlikely.{p}\n"))
            .collect();
        if !patterns.is_empty() {
            script.push_str(&format!("    *(\n{}    )\n", patterns.concat()));
        }
    }
    script.push_str("  }\n}\nINSERT BEFORE .text;\n");
    let path = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("hot-text.ld");
    fs::write(&path, script).expect("OUT_DIR is writable");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{}", path.display());
}
