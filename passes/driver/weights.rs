//! The rank files and the shared weights file: every local graph encoded once with its shared
//! initializers externalized into the weights file, then one `rank{i}.onnx` per rank with its
//! band's constants appended.
//!
//! **Invariant:** a shared initializer's bytes are written to the weights file once, however
//! many local graphs hold it; per-band constants are written once per band.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use super::graphs::Compiled;
use crate::contract::bands::Bands;
use crate::error::Internal;
use crate::ir::DataType;
use crate::onnx::proto::{StringStringEntryProto, TensorProto, tensor_proto::DataLocation};
use crate::onnx::{self, EncodedModel, ExternalData, ExternalStore};
use crate::tensor::Tensor;

/// Initializers larger than this many bytes go to the shared weights file.
pub const EXTERNAL_THRESHOLD: usize = 1024;
/// Alignment of every tensor in the shared weights file.
pub const ALIGN: u64 = 4096;
/// Name of the shared weights file.
pub const WEIGHTS_FILE: &str = "weights.bin";

/// Writes the shared weights file and every rank's model into `dir`, never under a name in
/// `taken` (the source's external files); the weights file's name when one was written.
pub(super) fn write_ranks(
    c: &Compiled,
    bands: &Bands,
    world: usize,
    dir: &Path,
    taken: &[String],
) -> Result<Option<String>> {
    let n = bands.n();
    let mut location = WEIGHTS_FILE.to_string();
    let mut k = 1;
    while taken.contains(&location) {
        location = format!("weights.{k}.bin");
        k += 1;
    }
    let mut weights = WeightsWriter {
        // A new file: never truncate one the source's external data was linked to.
        file: fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(&location))
            .with_context(|| format!("creating {location} in the plan folder"))?,
        len: 0,
        location: location.clone(),
        written: HashMap::new(),
    };
    let models = encode_parts(c, &mut weights)?;
    let band_inits = (0..n)
        .map(|band| band_initializers(c, bands, band, &mut weights))
        .collect::<Result<Vec<_>>>()?;
    weights.file.sync_all()?;
    let wrote_weights = weights.len > 0;
    drop(weights);
    if !wrote_weights {
        fs::remove_file(dir.join(&location))?;
    }
    for rank in 0..world {
        let band = rank % n;
        models[c.part_of_band[band]]
            .save_with(&band_inits[band], &dir.join(format!("rank{rank}.onnx")))?;
    }
    Ok(wrote_weights.then_some(location))
}

/// One model per local graph, encoded once with its shared initializers externalized and
/// without its per-band constants, which each rank's file appends.
fn encode_parts(c: &Compiled, weights: &mut WeightsWriter) -> Result<Vec<EncodedModel>> {
    let mut models = Vec::with_capacity(c.parts.len());
    for part in &c.parts {
        let mut proto = part
            .graph
            .to_model()
            .map_err(|e| Internal(format!("writing a rank graph: {e}")))?;
        let band_names: HashSet<&str> = part
            .local
            .band_constants
            .iter()
            .map(|b| part.graph.value(b.value()).name.as_str())
            .collect();
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| Internal("a rank model has no graph".into()))?;
        graph
            .initializer
            .retain(|t| !band_names.contains(t.name.as_deref().unwrap_or_default()));
        for t in &mut graph.initializer {
            weights.externalize_shared(t, &c.store)?;
        }
        models.push(onnx::EncodedModel::new(proto));
    }
    Ok(models)
}

/// The per-band constants of band `band`, computed once, large ones externalized.
fn band_initializers(
    c: &Compiled,
    bands: &Bands,
    band: usize,
    weights: &mut WeightsWriter,
) -> Result<Vec<TensorProto>> {
    let part = &c.parts[c.part_of_band[band]];
    let mut inits = Vec::new();
    for b in &part.local.band_constants {
        let value = b.value();
        let mut t = b.value_for(bands, band, &c.store)?.to_proto("");
        t.name = Some(part.graph.value(value).name.clone());
        weights.externalize(&mut t, &c.store)?;
        inits.push(t);
    }
    Ok(inits)
}

/// Appends tensors to the shared weights file at aligned offsets.
struct WeightsWriter {
    file: fs::File,
    len: u64,
    location: String,
    /// Shared initializers already written, by name: `(offset, length)`.
    written: HashMap<String, (u64, usize)>,
}

impl WeightsWriter {
    /// [`externalize`](Self::externalize) for an initializer every band's graph shares: its
    /// bytes are written once however many local graphs hold it.
    fn externalize_shared(&mut self, t: &mut TensorProto, store: &ExternalStore) -> Result<()> {
        if let Some(&(offset, len)) = t.name.as_ref().and_then(|n| self.written.get(n)) {
            *t = self.reference(t, offset, len);
            return Ok(());
        }
        self.externalize(t, store)?;
        if let (Some(name), Ok(Some(e))) = (t.name.clone(), ExternalData::of(t))
            && e.location == self.location
        {
            self.written
                .insert(name, (e.offset, e.length.unwrap_or_default() as usize));
        }
        Ok(())
    }

    /// A tensor like `t` whose bytes are `len` bytes at `offset` of the weights file.
    fn reference(&self, t: &TensorProto, offset: u64, len: usize) -> TensorProto {
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        TensorProto {
            dims: t.dims.clone(),
            data_type: t.data_type,
            name: t.name.clone(),
            doc_string: t.doc_string.clone(),
            metadata_props: t.metadata_props.clone(),
            data_location: Some(DataLocation::External as i32),
            external_data: vec![
                entry("location", self.location.clone()),
                entry("offset", offset.to_string()),
                entry("length", len.to_string()),
            ],
            ..Default::default()
        }
    }

    /// Moves `t`'s bytes to the file when it is larger than the threshold and stored inline.
    fn externalize(&mut self, t: &mut TensorProto, store: &ExternalStore) -> Result<()> {
        if ExternalData::of(t)?.is_some() {
            return Ok(());
        }
        let bytes: Vec<u8> = match &t.raw_data {
            Some(b) => b.to_vec(),
            None => {
                if !Tensor::supports(DataType(t.data_type())) {
                    return Ok(());
                }
                let decoded = Tensor::from_proto(t, store)?;
                decoded
                    .to_proto("")
                    .raw_data
                    .map(|b| b.to_vec())
                    .unwrap_or_default()
            }
        };
        if bytes.len() <= EXTERNAL_THRESHOLD {
            return Ok(());
        }
        let offset = self.len.div_ceil(ALIGN) * ALIGN;
        if offset > self.len {
            self.file
                .write_all(&vec![0u8; (offset - self.len) as usize])?;
        }
        self.file.write_all(&bytes)?;
        self.len = offset + bytes.len() as u64;
        *t = self.reference(t, offset, bytes.len());
        Ok(())
    }
}
