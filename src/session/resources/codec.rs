//! The encodings a client may send an image in (resources.md §3), decompressed next to the
//! device as the bytes arrive and compressed the same way for dumps. Which ones the exporter
//! accepts is said in the stream's headers; `JMP_DISABLE_COMPRESSION=1` declines them all, as
//! upstream does, and the client then sends raw bytes.

use async_compression::tokio::bufread::{
    BzDecoder, GzipDecoder, XzDecoder, ZlibDecoder, ZstdDecoder,
};
use async_compression::tokio::write::{BzEncoder, GzipEncoder, XzEncoder, ZstdEncoder};
use jmp_drivers::resource::{ByteSink, ByteSource};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Gzip,
    Xz,
    Bz2,
    Zstd,
}

impl Encoding {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "gzip" => Some(Self::Gzip),
            "xz" => Some(Self::Xz),
            "bz2" => Some(Self::Bz2),
            "zstd" => Some(Self::Zstd),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Gzip => "gzip",
            Self::Xz => "xz",
            Self::Bz2 => "bz2",
            Self::Zstd => "zstd",
        }
    }
}

/// What the exporter answers a client that sends `requested`: the encoding it will undo
/// itself, or `None` to decline (the client then decompresses and sends raw bytes).
pub fn accept(requested: Option<&str>) -> Option<Encoding> {
    if std::env::var("JMP_DISABLE_COMPRESSION").is_ok_and(|v| v == "1") {
        return None;
    }
    requested.and_then(Encoding::parse)
}

/// The upload's bytes, decompressed. `gzip` takes a zlib stream too (tools differ in which
/// header they write); concatenated members or frames are read through, as the command-line
/// tools do.
pub async fn decoder<R>(encoding: Encoding, mut source: R) -> std::io::Result<ByteSource>
where
    R: AsyncBufRead + Send + Unpin + 'static,
{
    Ok(match encoding {
        Encoding::Gzip => {
            let head = source.fill_buf().await?;
            if head.is_empty() || head[0] == 0x1f {
                let mut d = GzipDecoder::new(source);
                d.multiple_members(true);
                Box::new(d)
            } else {
                let mut d = ZlibDecoder::new(source);
                d.multiple_members(true);
                Box::new(d)
            }
        }
        Encoding::Xz => {
            let mut d = XzDecoder::new(source);
            d.multiple_members(true);
            Box::new(d)
        }
        Encoding::Bz2 => {
            let mut d = BzDecoder::new(source);
            d.multiple_members(true);
            Box::new(d)
        }
        Encoding::Zstd => {
            let mut d = ZstdDecoder::new(source);
            d.multiple_members(true);
            Box::new(d)
        }
    })
}

/// A dump's sink that compresses what the driver writes; its shutdown finishes the stream.
pub fn encoder<W>(encoding: Encoding, sink: W) -> ByteSink
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    match encoding {
        Encoding::Gzip => Box::new(GzipEncoder::new(sink)),
        Encoding::Xz => Box::new(XzEncoder::new(sink)),
        Encoding::Bz2 => Box::new(BzEncoder::new(sink)),
        Encoding::Zstd => Box::new(ZstdEncoder::new(sink)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn sample() -> Vec<u8> {
        (0..300_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    async fn round_trip(encoding: Encoding, data: &[u8]) -> Vec<u8> {
        let (mut theirs, ours) = tokio::io::duplex(64 * 1024);
        let data = data.to_vec();
        let writer = tokio::spawn(async move {
            let (a, b) = tokio::io::duplex(64 * 1024);
            let mut sink = encoder(encoding, a);
            let copy = tokio::spawn(async move {
                let mut b = b;
                tokio::io::copy(&mut b, &mut theirs).await.unwrap();
                theirs.shutdown().await.unwrap();
            });
            sink.write_all(&data).await.unwrap();
            sink.shutdown().await.unwrap();
            copy.await.unwrap();
        });
        let mut source = decoder(encoding, tokio::io::BufReader::new(ours))
            .await
            .unwrap();
        let mut out = Vec::new();
        source.read_to_end(&mut out).await.unwrap();
        writer.await.unwrap();
        out
    }

    #[tokio::test]
    async fn every_encoding_comes_back_as_it_went() {
        let data = sample();
        for encoding in [Encoding::Gzip, Encoding::Xz, Encoding::Bz2, Encoding::Zstd] {
            assert_eq!(round_trip(encoding, &data).await, data, "{encoding:?}");
        }
    }

    #[tokio::test]
    async fn gzip_takes_a_zlib_stream_and_concatenated_members() {
        use async_compression::tokio::write::ZlibEncoder;
        let data = sample();
        let mut zlib = ZlibEncoder::new(Vec::new());
        zlib.write_all(&data).await.unwrap();
        zlib.shutdown().await.unwrap();
        let mut out = Vec::new();
        decoder(Encoding::Gzip, std::io::Cursor::new(zlib.into_inner()))
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, data);

        let mut two = Vec::new();
        for half in [&data[..1000], &data[1000..]] {
            let mut g = GzipEncoder::new(Vec::new());
            g.write_all(half).await.unwrap();
            g.shutdown().await.unwrap();
            two.extend(g.into_inner());
        }
        let mut out = Vec::new();
        decoder(Encoding::Gzip, std::io::Cursor::new(two))
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, data);
    }

    #[tokio::test]
    async fn a_corrupt_stream_is_an_error_not_garbage() {
        let mut out = Vec::new();
        let e = decoder(Encoding::Zstd, &b"definitely not zstd"[..])
            .await
            .unwrap()
            .read_to_end(&mut out)
            .await
            .unwrap_err();
        assert!(!e.to_string().is_empty());
    }

    #[test]
    fn names_and_declining() {
        for name in ["gzip", "xz", "bz2", "zstd"] {
            assert_eq!(Encoding::parse(name).map(Encoding::name), Some(name));
        }
        assert_eq!(Encoding::parse("lz4"), None);
        assert_eq!(accept(Some("lz4")), None);
        assert_eq!(accept(None), None);
    }
}
