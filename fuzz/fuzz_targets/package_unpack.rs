//! Update packages on arbitrary bytes: `package::unpack` must not panic,
//! must refuse what is not a complete, signed, matching package, and must
//! leave no staging directory behind when it refuses. Half the inputs are
//! whole archives; the other half are a manifest (fuzzed bytes) signed
//! with the trusted key followed by one file, so that the fuzzer also
//! reaches the manifest's checks and the file digests behind the
//! signature.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ring::signature::{Ed25519KeyPair, KeyPair};
use tandem_control::update::package::{unpack, TrustedKey};

struct Fixture {
    pair: Ed25519KeyPair,
    trusted: Vec<TrustedKey>,
    dir: PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).expect("a key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("the key");
        let hex: String = pair
            .public_key()
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let trusted = vec![TrustedKey::parse("fuzz.pub", &hex).expect("hex key")];
        let dir = std::env::temp_dir().join(format!("tandem-fuzz-pkg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("fuzz dir");
        Fixture { pair, trusted, dir }
    })
}

fn append(tar: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let _ = tar.append_data(&mut h, name, data);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let f = fixture();
    let archive = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        // [manifest length: 2 bytes][manifest][the file's bytes]
        if rest.len() < 2 {
            return;
        }
        let n = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
        let (manifest, file) = rest[2..].split_at(n);
        let mut tar = tar::Builder::new(Vec::new());
        append(&mut tar, "manifest.json", manifest);
        append(&mut tar, "manifest.sig", f.pair.sign(manifest).as_ref());
        append(&mut tar, "bin/tandemd", file);
        match tar.into_inner() {
            Ok(v) => v,
            Err(_) => return,
        }
    };
    let pkg = f.dir.join("input.pkg");
    let staging = f.dir.join("staging");
    let _ = std::fs::remove_dir_all(&staging);
    if std::fs::File::create(&pkg)
        .and_then(|mut w| w.write_all(&archive))
        .is_err()
    {
        return;
    }
    if unpack(&pkg, &f.trusted, &staging).is_err() {
        assert!(!staging.exists(), "a refused package left its staging directory");
    }
    let _ = std::fs::remove_dir_all(&staging);
});
