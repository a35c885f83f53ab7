//! The committed header `sdk/include/tether.h` is what cbindgen makes of the code: a change to
//! the ABI that is not in the header (or the reverse) fails here. `TETHER_WRITE_HEADER=1 cargo
//! test -p tether-sdk --test header` rewrites it.

use std::path::Path;

#[test]
fn header_matches_the_code() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(dir.join("cbindgen.toml")).expect("cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate")
        .write(&mut generated);
    let generated = String::from_utf8(generated).expect("a header is text");
    let path = dir.join("include/tether.h");
    if std::env::var_os("TETHER_WRITE_HEADER").is_some() {
        std::fs::write(&path, &generated).expect("writing the header");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "sdk/include/tether.h differs from the code; regenerate it with \
         `TETHER_WRITE_HEADER=1 cargo test -p tether-sdk --test header` and commit it"
    );
}
