//! The members' service (TCP 1300) on arbitrary bytes: the frame reader,
//! the server's side of the handshake and a session must not panic, and
//! nothing is answered past a failed step. Half the inputs are run after a
//! real handshake, so that the fuzzer also reaches the sealed frames.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_control::peer::handshake::{
    preauth_frame, ClientHandshake, FrameReader, Purpose, ServerHandshake, NONCE_LEN,
};

const KEY: &[u8] = &[7u8; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut server = ServerHandshake::new(KEY, 42, "TDLAB0001", [2; NONCE_LEN]);
    let mut reader = FrameReader::preauth();
    if mode & 1 == 1 {
        // A member's handshake first, then the fuzzed bytes as sealed
        // frames of the session.
        let (mut c, hello) = ClientHandshake::new(Purpose::Member, "TDLAB0002", [1; NONCE_LEN]);
        let (_, sh) = server.on_hello(&hello).expect("a valid hello");
        c.on_hello(&sh).expect("a valid server hello");
        let proof = c.prove(KEY).expect("in order");
        let (_, mut session) = server.on_proof(&proof).expect("the right key");
        reader.switch_to_sealed();
        reader.push(rest);
        while let Ok(Some(frame)) = reader.next_frame() {
            if session.open(&frame).is_err() {
                break;
            }
        }
        return;
    }
    // Pre-auth bytes: at most a hello and a proof get through, and a
    // proof without the key never does.
    reader.push(rest);
    let mut step = 0;
    while let Ok(Some(body)) = reader.next_frame() {
        let ok = match step {
            0 => server.on_hello(&body).map(|(_, sh)| preauth_frame(&sh)).is_ok(),
            _ => {
                assert!(server.on_proof(&body).is_err(), "a proof made without the key passed");
                false
            }
        };
        if !ok {
            break;
        }
        step += 1;
    }
});
