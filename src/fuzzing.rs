//! The bodies of the fuzz targets (`fuzz/`), kept in the library so that the saved corpus and
//! every past crash are replayed by an ordinary test on every CI run, with no fuzzer needed.
//! Each function takes arbitrary bytes and must neither panic nor loop; where the code under
//! test promises something (the edge keeps lengths), the function checks it.

use bytes::BytesMut;
use prost::Message;

use crate::frame;
use crate::proto::{DriverCallRequest, StreamRequest};
use crate::session::edge::AuthorityRewriter;
use crate::session::value;

/// The config reader on any text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::parse(text, &|_| None);
    }
}

/// The Value codec on any encoded call: decode, to JSON and back.
pub fn value(data: &[u8]) {
    if let Ok(call) = DriverCallRequest::decode(data) {
        for arg in call.args {
            let json = value::to_json(arg);
            let back = value::from_json(json.clone());
            assert_eq!(value::to_json(back), json, "the codec does not round-trip");
        }
    }
}

/// Router frame handling on any encoded frame.
pub fn frame(data: &[u8]) {
    if let Ok(request) = StreamRequest::decode(data) {
        let _ = frame::classify(request.frame_type, request.payload);
    }
}

/// The HTTP/2 edge on any byte stream cut at any points: never panics, never changes the
/// number of bytes.
pub fn edge(data: &[u8]) {
    let Some((&cuts, rest)) = data.split_first() else {
        return;
    };
    let mut rewriter = AuthorityRewriter::new();
    let mut out = BytesMut::new();
    let step = usize::from(cuts).max(1);
    for chunk in rest.chunks(step) {
        rewriter.feed(chunk, &mut out);
    }
    rewriter.finish(&mut out);
    assert_eq!(
        out.len(),
        rest.len(),
        "the edge changed the length of the stream"
    );
}

/// Driver argument decoding: any encoded call against the demo drivers' methods.
pub fn driver_args(data: &[u8]) {
    let Ok(call) = DriverCallRequest::decode(data) else {
        return;
    };
    let args: Vec<jmp_drivers::Json> = call.args.into_iter().map(value::to_json).collect();
    let method = call.method.as_str();
    let _ = jmp_drivers::args::expect_count(method, &args, 1);
    let _ = jmp_drivers::args::boolean(method, &args, 0);
    let _ = jmp_drivers::args::optional_number(method, &args, 0);
    let _ = jmp_drivers::args::text(method, &args, 0);
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: &[(&str, Target)] = &[
    ("config", config),
    ("value", value),
    ("frame", frame),
    ("edge", edge),
    ("driver_args", driver_args),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::FrameType;

    /// Replays the saved corpus (and every crash kept as a regression) of every target.
    #[test]
    fn the_fuzz_corpus_replays_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        for (name, target) in TARGETS {
            let dir = root.join(name);
            let files: Vec<_> = std::fs::read_dir(&dir)
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .map(|e| e.unwrap().path())
                .collect();
            assert!(!files.is_empty(), "no corpus for {name}");
            for file in files {
                target(&std::fs::read(&file).unwrap());
            }
        }
    }

    /// Writes the seed inputs that are protobuf-encoded (run with `--ignored` to refresh them).
    #[test]
    #[ignore = "writes seed files; run by hand when the protos change"]
    fn write_protobuf_seeds() {
        use prost::Message;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
        let call = DriverCallRequest {
            uuid: "5b5f0b8e-1c5e-4d6c-9a43-0a1c9f5e2d11".into(),
            method: "set_dtr".into(),
            args: vec![
                value::from_json(serde_json::json!(true)),
                value::from_json(serde_json::json!({"a": [1.5, null, "x"]})),
            ],
        };
        std::fs::write(root.join("value/seed-call"), call.encode_to_vec()).unwrap();
        std::fs::write(root.join("driver_args/seed-call"), call.encode_to_vec()).unwrap();
        let frame = StreamRequest {
            payload: bytes::Bytes::from_static(b"hello"),
            frame_type: FrameType::Goaway as i32,
        };
        std::fs::write(root.join("frame/seed-goaway"), frame.encode_to_vec()).unwrap();
    }

    #[test]
    fn targets_hold_their_promises_on_hand_made_inputs() {
        edge(&[3, 1, 2, 3, 4, 5]);
        config(b"metadata: {}\nexport: [");
        value(&[0x1a, 0x02, 0x08, 0x01]);
        frame(&[0x10, 0x07]);
        driver_args(&[0x12, 0x02, b'o', b'n']);
    }
}
