//! Parquet tables: one documented column schema per table kind, written with zstd and
//! provenance in the file's key-value metadata, so that pandas, polars, DuckDB and
//! pyarrow open them as they are.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

/// The logical type of a column, as documented in schemas/tables/.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ColumnType {
    #[serde(rename = "utf8")]
    Utf8,
    #[serde(rename = "float64")]
    Float64,
    #[serde(rename = "uint64")]
    UInt64,
    #[serde(rename = "int64")]
    Int64,
    #[serde(rename = "bool")]
    Boolean,
    /// A list of strings.
    #[serde(rename = "list<utf8>")]
    ListUtf8,
    /// A list of integers.
    #[serde(rename = "list<int64>")]
    ListInt64,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::Utf8 => DataType::Utf8,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::UInt64 => DataType::UInt64,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::ListUtf8 => {
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
            }
            ColumnType::ListInt64 => {
                DataType::List(Arc::new(Field::new("item", DataType::Int64, true)))
            }
        }
    }
}

/// One column of a table kind.
#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub ty: ColumnType,
    pub nullable: bool,
    pub doc: &'static str,
}

impl Column {
    pub const fn new(
        name: &'static str,
        ty: ColumnType,
        nullable: bool,
        doc: &'static str,
    ) -> Self {
        Column {
            name,
            ty,
            nullable,
            doc,
        }
    }
}

/// A table kind: its name (`comparisons`), the version of its column schema, and what it
/// holds. Bump `version` whenever a column changes.
#[derive(Debug, Clone, Serialize)]
pub struct TableKind {
    pub name: &'static str,
    pub version: u32,
    pub doc: &'static str,
    pub columns: &'static [Column],
}

impl TableKind {
    pub fn arrow_schema(&self) -> SchemaRef {
        let fields: Vec<Field> = self
            .columns
            .iter()
            .map(|c| Field::new(c.name, c.ty.arrow(), c.nullable))
            .collect();
        Arc::new(Schema::new(fields))
    }

    /// The documented schema as pretty JSON (schemas/tables/NAME.json).
    pub fn schema_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("table schema serialises");
        text.push('\n');
        text
    }
}

/// Rows that know how to become Arrow columns of their table kind.
pub trait TableRow: Sized {
    const KIND: &'static TableKind;
    /// The columns of `rows`, in the order of `KIND.columns`.
    fn columns(rows: &[Self]) -> Vec<ArrayRef>;
}

/// Who wrote a table, recorded in its Parquet key-value metadata.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    pub stage: String,
    pub fingerprint: String,
}

/// Streams rows into a Parquet file in batches, so that a million rows never sit in memory
/// at once.
pub struct TableWriter<T: TableRow> {
    writer: ArrowWriter<File>,
    buffer: Vec<T>,
    batch_rows: usize,
    rows: u64,
}

impl<T: TableRow> TableWriter<T> {
    pub fn create(
        path: &Path,
        provenance: &Provenance,
    ) -> Result<Self, parquet::errors::ParquetError> {
        let file = File::create(path)?;
        let kind = T::KIND;
        let metadata = vec![
            KeyValue::new("hone.table".to_string(), kind.name.to_string()),
            KeyValue::new("hone.table_version".to_string(), kind.version.to_string()),
            KeyValue::new("hone.stage".to_string(), provenance.stage.clone()),
            KeyValue::new(
                "hone.fingerprint".to_string(),
                provenance.fingerprint.clone(),
            ),
            KeyValue::new(
                "hone.version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            ),
        ];
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::default()))
            .set_key_value_metadata(Some(metadata))
            // Bounded row groups keep the writer's memory flat however many rows stream in.
            .set_max_row_group_row_count(Some(65_536))
            .set_created_by(format!("hone {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = ArrowWriter::try_new(file, kind.arrow_schema(), Some(props))?;
        Ok(TableWriter {
            writer,
            buffer: Vec::new(),
            batch_rows: 8192,
            rows: 0,
        })
    }

    pub fn push(&mut self, row: T) -> Result<(), parquet::errors::ParquetError> {
        self.buffer.push(row);
        if self.buffer.len() >= self.batch_rows {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), parquet::errors::ParquetError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let batch = RecordBatch::try_new(T::KIND.arrow_schema(), T::columns(&self.buffer))?;
        self.writer.write(&batch)?;
        self.rows += self.buffer.len() as u64;
        self.buffer.clear();
        Ok(())
    }

    /// Writes what is buffered and the footer; returns the number of rows.
    pub fn finish(mut self) -> Result<u64, parquet::errors::ParquetError> {
        self.flush()?;
        self.writer.close()?;
        Ok(self.rows)
    }
}

/// Helpers to build Arrow columns from row fields.
pub mod col {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, BooleanArray, Float64Array, Int64Array, ListBuilder, StringArray, StringBuilder,
        UInt64Array,
    };

    pub fn utf8<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
        Arc::new(StringArray::from_iter_values(values))
    }

    pub fn utf8_opt<'a>(values: impl Iterator<Item = Option<&'a str>>) -> ArrayRef {
        Arc::new(values.collect::<StringArray>())
    }

    pub fn f64_opt(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
        Arc::new(values.collect::<Float64Array>())
    }

    pub fn f64(values: impl Iterator<Item = f64>) -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(values))
    }

    pub fn u64(values: impl Iterator<Item = u64>) -> ArrayRef {
        Arc::new(UInt64Array::from_iter_values(values))
    }

    pub fn u64_opt(values: impl Iterator<Item = Option<u64>>) -> ArrayRef {
        Arc::new(values.collect::<UInt64Array>())
    }

    pub fn i64(values: impl Iterator<Item = i64>) -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(values))
    }

    pub fn bool(values: impl Iterator<Item = bool>) -> ArrayRef {
        Arc::new(values.map(Some).collect::<BooleanArray>())
    }

    pub fn bool_opt(values: impl Iterator<Item = Option<bool>>) -> ArrayRef {
        Arc::new(values.collect::<BooleanArray>())
    }

    pub fn list_i64_opt<'a>(values: impl Iterator<Item = Option<&'a [i64]>>) -> ArrayRef {
        let mut builder = ListBuilder::new(arrow::array::Int64Builder::new());
        for list in values {
            match list {
                Some(list) => {
                    builder.values().append_slice(list);
                    builder.append(true);
                }
                None => builder.append(false),
            }
        }
        Arc::new(builder.finish())
    }

    pub fn list_utf8<'a>(values: impl Iterator<Item = &'a [String]>) -> ArrayRef {
        let mut builder = ListBuilder::new(StringBuilder::new());
        for list in values {
            for item in list {
                builder.values().append_value(item);
            }
            builder.append(true);
        }
        Arc::new(builder.finish())
    }
}

/// Reads every batch of a Parquet file (for tests and small tables; large inputs stream
/// with [`batches`]).
pub fn read_all(path: &Path) -> Result<Vec<RecordBatch>, parquet::errors::ParquetError> {
    batches(path)?
        .map(|b| b.map_err(parquet::errors::ParquetError::from))
        .collect()
}

/// Every row of a Parquet file as a JSON object (for small tables and tests).
/// The stage that wrote a hone table (its `hone.stage` metadata).
pub fn written_by(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let reader = parquet::file::reader::SerializedFileReader::new(file).ok()?;
    use parquet::file::reader::FileReader;
    reader
        .metadata()
        .file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|kv| kv.key == "hone.stage")
        .and_then(|kv| kv.value.clone())
}

pub fn read_rows(
    path: &Path,
) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, parquet::errors::ParquetError> {
    let mut rows = Vec::new();
    for batch in read_all(path)? {
        let schema = batch.schema();
        for r in 0..batch.num_rows() {
            let mut map = serde_json::Map::new();
            for (c, field) in schema.fields().iter().enumerate() {
                map.insert(
                    field.name().clone(),
                    json_value(batch.column(c).as_ref(), r).unwrap_or_default(),
                );
            }
            rows.push(map);
        }
    }
    Ok(rows)
}

/// Streams the batches of a Parquet file. A damaged file is an error, also where the
/// parquet crate would panic on it (it asserts on some inconsistent metadata: found by
/// fuzzing the feedback readers, `fuzz/`), so a bad input file fails its stage with a
/// message instead of taking hone down.
pub fn batches(path: &Path) -> Result<Batches, parquet::errors::ParquetError> {
    let file = File::open(path)?;
    // A file up to 64 MiB is read into memory first: the parquet reader reads a `File`
    // piece by piece, a syscall each, and a damaged page header can make it read
    // millions of pieces (a fuzzed 2 KB file took 33 s to reject that way).
    let size = file.metadata()?.len();
    let built = if size <= 64 << 20 {
        let mut data = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut &file, &mut data)?;
        let data = bytes::Bytes::from(data);
        quietly(|| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)?
                .with_batch_size(8192)
                .build()
        })
    } else {
        quietly(|| {
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
                .with_batch_size(8192)
                .build()
        })
    }
    .unwrap_or_else(|| Err(damaged()));
    Ok(Batches {
        inner: Some(built?),
    })
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic (`None`) without the panic hook's message: a library's
/// assertion on bad input is reported by the caller as an error, not as a crash. Other
/// threads' panics are printed as before.
fn quietly<T>(f: impl FnOnce() -> T) -> Option<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.ok()
}

fn damaged() -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::General(
        "the file is damaged (its metadata is inconsistent)".into(),
    )
}

/// The batches of a Parquet file ([`batches`]); after an error, no more.
pub struct Batches {
    inner: Option<parquet::arrow::arrow_reader::ParquetRecordBatchReader>,
}

impl Iterator for Batches {
    type Item = Result<RecordBatch, arrow::error::ArrowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let inner = self.inner.as_mut()?;
        match quietly(|| inner.next()) {
            Some(Some(Err(e))) => {
                self.inner = None;
                Some(Err(e))
            }
            Some(item) => item,
            None => {
                self.inner = None;
                Some(Err(arrow::error::ArrowError::ParquetError(
                    damaged().to_string(),
                )))
            }
        }
    }
}

/// The value at `row` of an Arrow array as JSON (strings, numbers, booleans, lists and
/// structs; binary that is not UTF-8 is `None`, for the caller to reject).
pub fn json_value(array: &dyn arrow::array::Array, row: usize) -> Option<serde_json::Value> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::*;
    use serde_json::Value;
    if array.is_null(row) {
        return Some(Value::Null);
    }
    let number = |v: f64| {
        serde_json::Number::from_f64(v)
            .map(Value::Number)
            .unwrap_or(Value::String(v.to_string()))
    };
    Some(match array.data_type() {
        DataType::Utf8 => Value::String(array.as_string::<i32>().value(row).to_string()),
        DataType::LargeUtf8 => Value::String(array.as_string::<i64>().value(row).to_string()),
        DataType::Utf8View => Value::String(array.as_string_view().value(row).to_string()),
        DataType::Binary => {
            Value::String(String::from_utf8(array.as_binary::<i32>().value(row).to_vec()).ok()?)
        }
        DataType::LargeBinary => {
            Value::String(String::from_utf8(array.as_binary::<i64>().value(row).to_vec()).ok()?)
        }
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => Value::from(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 => Value::from(array.as_primitive::<UInt8Type>().value(row)),
        DataType::UInt16 => Value::from(array.as_primitive::<UInt16Type>().value(row)),
        DataType::UInt32 => Value::from(array.as_primitive::<UInt32Type>().value(row)),
        DataType::UInt64 => Value::from(array.as_primitive::<UInt64Type>().value(row)),
        DataType::Float32 => number(f64::from(array.as_primitive::<Float32Type>().value(row))),
        DataType::Float64 => number(array.as_primitive::<Float64Type>().value(row)),
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            Value::Array(
                (0..list.len())
                    .map(|i| json_value(list.as_ref(), i))
                    .collect::<Option<_>>()?,
            )
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>().value(row);
            Value::Array(
                (0..list.len())
                    .map(|i| json_value(list.as_ref(), i))
                    .collect::<Option<_>>()?,
            )
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut map = serde_json::Map::new();
            for (i, field) in fields.iter().enumerate() {
                map.insert(field.name().clone(), json_value(s.column(i).as_ref(), row)?);
            }
            Value::Object(map)
        }
        other => Value::String(format!("<unsupported Arrow type {other}>")),
    })
}
