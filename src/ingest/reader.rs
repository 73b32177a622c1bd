//! Opens a landed file as a blocking `Read`, decompressing by extension.
//! Local files are read directly; other stores are streamed by an async task
//! into a channel that the parser thread drains.

use std::io::Read;

use bytes::Bytes;
use futures::StreamExt;
use object_store::ObjectStoreExt;
use tokio::sync::mpsc;

use crate::storage::LandedFile;

pub fn open(
    file: &LandedFile,
    handle: tokio::runtime::Handle,
) -> std::io::Result<Box<dyn Read + Send>> {
    let raw: Box<dyn Read + Send> = match &file.local_path {
        Some(path) => Box::new(std::fs::File::open(path)?),
        None => {
            let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
            let store = file.store.clone();
            let location = file.location.clone();
            handle.spawn(async move {
                match store.get(&location).await {
                    Ok(result) => {
                        let mut stream = result.into_stream();
                        while let Some(chunk) = stream.next().await {
                            let item = chunk.map_err(std::io::Error::other);
                            let stop = item.is_err();
                            if tx.send(item).await.is_err() || stop {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e))).await;
                    }
                }
            });
            Box::new(ChannelReader {
                rx,
                current: Bytes::new(),
            })
        }
    };
    let lower = file.name.to_lowercase();
    Ok(if lower.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            raw,
        )))
    } else if lower.ends_with(".zst") || lower.ends_with(".zstd") {
        Box::new(zstd::Decoder::new(raw)?)
    } else if lower.ends_with(".bz2") {
        Box::new(bzip2::read::MultiBzDecoder::new(raw))
    } else {
        raw
    })
}

struct ChannelReader {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
