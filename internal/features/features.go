// Package features stores and loads feature files: one Arrow IPC file per
// (model spec, shard content), under features/<spec>/<shard>.arrow.
//
// The file holds each embedded image's key and one fixed-size column per
// model output, of float32 values or, when the spec says so, float16
// values (half the bytes; Load widens them to float32). Labels and ids are
// not in it: they belong to a pass's shard manifest and are joined back in
// by key order (Join), so passes with other labels over the same images
// share the cache.
package features

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/apache/arrow/go/v15/arrow"
	"github.com/apache/arrow/go/v15/arrow/array"
	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"

	"dcd/internal/dataset"
	"dcd/internal/embed"
	"dcd/internal/half"
	"dcd/internal/preprocess"
	"dcd/internal/store"
	"dcd/schemas"
)

// Spec is everything that decides a model's outputs for an image; its
// Digest names the cache folder.
type Spec struct {
	ModelDigest string          `json:"model_digest"`
	Input       string          `json:"input"`
	Outputs     []string        `json:"outputs"` // tensor names
	Columns     []string        `json:"columns"` // column name for each output
	Preprocess  preprocess.Spec `json:"preprocess"`
	// Exposed lists the Outputs that are not graph outputs of the model and
	// are read through a rewritten graph (onnx.ExposeOutputs, flattened).
	Exposed []string `json:"exposed,omitempty"`
	// StoredAs is the value type of the files: schemas.Float16, or
	// schemas.Float32 or empty for float32.
	StoredAs string `json:"stored_as,omitempty"`
	// Decoder is the version of the image decoders that make the
	// model's inputs (preprocess.DecoderVersion), which decide its
	// features as much as the rest: recorded when a pass checks its
	// models, so that every shard of the pass, on whichever worker, is
	// one decoding (Embeddable). 0, from passes started before it was
	// recorded, hashes as those passes did.
	Decoder int `json:"decoder,omitempty"`
}

// Embeddable says whether this worker may embed images for spec: its
// decoders are the spec's, or the spec predates recording them.
func (s Spec) Embeddable() error {
	if s.Decoder != 0 && s.Decoder != preprocess.DecoderVersion {
		return fmt.Errorf("features: this worker decodes images as version %d of DCD's decoders, the pass's models were checked with version %d: its features would mix two decodings (a pass started before the workers were upgraded: start it again; its cached features are kept)", preprocess.DecoderVersion, s.Decoder)
	}
	return nil
}

// Digest is a short stable hash of the spec. A float32 spec hashes
// without StoredAs, so that naming float32 or not is one cache.
func (s Spec) Digest() string {
	if s.StoredAs == schemas.Float32 {
		s.StoredAs = ""
	}
	b, _ := json.Marshal(s)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])[:24]
}

// Key is where the features of a shard live.
func Key(spec Spec, shardDigest string) string {
	return "features/" + spec.Digest() + "/" + shardDigest + ".arrow"
}

// Record builds the record batch for one embedded batch; columns name the
// outputs, and storedAs (schemas.Float16, or anything else for float32)
// is the value type. Float32 vector columns are b.Vectors themselves, not copies,
// so b must not change while the record lives. The caller must Release it.
func Record(mem memory.Allocator, columns []string, b embed.Batch, storedAs string) arrow.Record {
	schema := schemas.Features(columns, b.Dims, storedAs)
	n := len(b.Images)
	ub := array.NewStringBuilder(mem)
	defer ub.Release()
	ub.Reserve(n)
	size := 0
	for _, im := range b.Images {
		size += len(im.URI)
	}
	ub.ReserveData(size)
	for _, im := range b.Images {
		ub.Append(im.URI)
	}
	cols := []arrow.Array{ub.NewArray()}
	for o := range columns {
		vec := b.Vectors[o][:n*b.Dims[o]]
		var values arrow.ArrayData
		if storedAs == schemas.Float16 {
			h := make([]uint16, len(vec))
			half.FromFloat32s(h, vec)
			values = array.NewData(arrow.FixedWidthTypes.Float16, len(h), []*memory.Buffer{nil, memory.NewBufferBytes(arrow.Uint16Traits.CastToBytes(h))}, nil, 0, 0)
		} else {
			values = array.NewData(arrow.PrimitiveTypes.Float32, len(vec), []*memory.Buffer{nil, memory.NewBufferBytes(arrow.Float32Traits.CastToBytes(vec))}, nil, 0, 0)
		}
		list := array.NewData(schema.Field(1+o).Type, n, []*memory.Buffer{nil}, []arrow.ArrayData{values}, 0, 0)
		cols = append(cols, array.MakeFromData(list))
		values.Release()
		list.Release()
	}
	rec := array.NewRecord(schema, cols, int64(n))
	for _, c := range cols {
		c.Release()
	}
	return rec
}

// Concat is recs, of one schema, as one record, which the caller must
// Release.
func Concat(mem memory.Allocator, recs ...arrow.Record) (arrow.Record, error) {
	if len(recs) == 1 {
		recs[0].Retain()
		return recs[0], nil
	}
	cols := make([]arrow.Array, recs[0].NumCols())
	defer func() {
		for _, c := range cols {
			if c != nil {
				c.Release()
			}
		}
	}()
	rows := int64(0)
	for _, r := range recs {
		rows += r.NumRows()
	}
	parts := make([]arrow.Array, len(recs))
	for c := range cols {
		for i, r := range recs {
			parts[i] = r.Column(c)
		}
		col, err := array.Concatenate(parts, mem)
		if err != nil {
			return nil, fmt.Errorf("features: records: %w", err)
		}
		cols[c] = col
	}
	return array.NewRecord(recs[0].Schema(), cols, rows), nil
}

// RecordBytes is the size of rec's buffers.
func RecordBytes(rec arrow.Record) int {
	n := 0
	for _, col := range rec.Columns() {
		n += dataBytes(col.Data())
	}
	return n
}

func dataBytes(d arrow.ArrayData) int {
	n := 0
	for _, b := range d.Buffers() {
		if b != nil {
			n += b.Len()
		}
	}
	for _, c := range d.Children() {
		n += dataBytes(c)
	}
	return n
}

// Matrix is one column of a feature file as a dense row-major matrix.
type Matrix struct {
	URIs []string
	Data []float32 // len(URIs)*Dim
	Dim  int
}

// Row returns row i.
func (m *Matrix) Row(i int) []float32 { return m.Data[i*m.Dim : (i+1)*m.Dim] }

// Load reads one column of the feature file at key.
func Load(ctx context.Context, b *blob.Bucket, key, column string, mem memory.Allocator) (*Matrix, error) {
	ms, err := LoadColumns(ctx, b, key, []string{column}, mem)
	if err != nil {
		return nil, err
	}
	return ms[0], nil
}

// LoadColumns reads several columns of the feature file at key in one
// read; the matrices share their URIs.
func LoadColumns(ctx context.Context, b *blob.Bucket, key string, columns []string, mem memory.Allocator) ([]*Matrix, error) {
	return loadRows(ctx, b, key, columns, mem, picker{})
}

// loadRows reads the file at key whole and copies the rows p picks.
func loadRows(ctx context.Context, b *blob.Bucket, key string, columns []string, mem memory.Allocator, p picker) ([]*Matrix, error) {
	f, err := store.OpenArrow(ctx, b, key, mem)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// The file is read whole: what goes wrong from here on is its
	// content's (store.ErrDamaged).
	damaged := func(ms []*Matrix, err error) ([]*Matrix, error) {
		if err != nil {
			err = store.Damaged(err)
		}
		return ms, err
	}
	idx, dims, err := columnsOf(key, f.Schema(), columns)
	if err != nil {
		return damaged(nil, err)
	}
	// The layout DCD writes is read in place; Arrow's reader reads the rest.
	if ms, ok, err := pickRows(whole(f.Data), len(f.Data), f.Schema(), idx, dims, p); ok {
		if err != nil {
			return damaged(nil, fmt.Errorf("features: %q: %w", key, err))
		}
		return ms, nil
	}
	return damaged(arrowRows(key, f, columns, idx, dims, p))
}

// columnsOf finds each column's field index and width in schema.
func columnsOf(key string, schema *arrow.Schema, columns []string) (idx, dims []int, err error) {
	idx, dims = make([]int, len(columns)), make([]int, len(columns))
	for c, column := range columns {
		i := schema.FieldIndices(column)
		if len(i) == 0 {
			return nil, nil, fmt.Errorf("features: %q has no column %q (schema %s)", key, column, schema)
		}
		list, ok := schema.Field(i[0]).Type.(*arrow.FixedSizeListType)
		if !ok || (list.Elem().ID() != arrow.FLOAT32 && list.Elem().ID() != arrow.FLOAT16) {
			return nil, nil, fmt.Errorf("features: %q column %q is %s, want a fixed-size list of float32 or float16", key, column, schema.Field(i[0]).Type)
		}
		idx[c], dims[c] = i[0], int(list.Len())
	}
	return idx, dims, nil
}

// arrowRows is loadRows through Arrow's reader, for files pickRows does
// not read. Arrow's reader checks the buffers against the file's size but
// not the counts of rows: those, and what they would have allocated, are
// checked against the file's size (every row takes at least a string
// offset, every value at least two bytes), so that a damaged file is an
// error, not a fatal allocation.
func arrowRows(key string, f *store.ArrowFile, columns []string, idx, dims []int, p picker) (_ []*Matrix, err error) {
	defer func() {
		if r := recover(); r != nil { // a buffer shorter than its metadata says
			err = fmt.Errorf("features: %q: damaged IPC file: %v", key, r)
		}
	}()
	// A file has a record per embedded batch: they are all read before the
	// matrices are sized, so their rows are copied once, not regrown batch
	// by batch.
	recs := make([]arrow.Record, f.NumRecords())
	defer func() {
		for _, rec := range recs {
			if rec != nil {
				rec.Release()
			}
		}
	}()
	rows, size := 0, len(f.Data)
	for i := range recs {
		if recs[i], err = f.RecordAt(i); err != nil {
			return nil, fmt.Errorf("features: %q record %d: %w", key, i, err)
		}
		rows += int(recs[i].NumRows())
		if rows > size/4 {
			return nil, fmt.Errorf("features: %q: damaged IPC file: %d rows by record %d in %d bytes", key, rows, i, size)
		}
	}
	for c, column := range columns {
		if rows*dims[c] > size/2 {
			return nil, fmt.Errorf("features: %q: damaged IPC file: %d rows of %d values in column %q in %d bytes", key, rows, dims[c], column, size)
		}
	}
	all := !p.byIndex
	uris := make([]string, 0, rows)
	kept := make([][]int, len(recs)) // each record's rows kept, unless all
	before := 0                      // the file's rows before the record's
	for i, rec := range recs {
		col, ok := rec.Column(0).(*array.String)
		if !ok {
			return nil, fmt.Errorf("features: %q record %d: column 0 is %s, want the images' URIs as strings", key, i, rec.Column(0).DataType())
		}
		if col.Len() != int(rec.NumRows()) {
			// Its URIs would be paired with another record's vectors.
			return nil, fmt.Errorf("features: %q: damaged IPC file: record %d has %d URIs for %d rows", key, i, col.Len(), rec.NumRows())
		}
		for j := 0; j < col.Len(); j++ {
			if all {
				// Copied: the record's buffers are released when this
				// returns, and an allocator other than Go's reuses them.
				uris = append(uris, strings.Clone(col.Value(j)))
			} else if p.keeps(before + j) {
				uris = append(uris, strings.Clone(col.Value(j))) // a few: not to pin the whole file
				kept[i] = append(kept[i], j)
			}
		}
		before += col.Len()
	}
	if p.byIndex && len(uris) < len(p.rows) {
		return nil, fmt.Errorf("features: %q: %w", key, rowPastEnd(p.rows[len(uris)], before))
	}
	ms := make([]*Matrix, len(columns))
	for c, column := range columns {
		m := &Matrix{Dim: dims[c], URIs: uris, Data: make([]float32, len(uris)*dims[c])}
		at := 0
		for i, rec := range recs {
			values := rec.Column(idx[c]).(*array.FixedSizeList).ListValues()
			if values.Len() != int(rec.NumRows())*m.Dim {
				return nil, fmt.Errorf("features: %q record %d: %d values in column %q for %d rows of %d", key, i, values.Len(), column, rec.NumRows(), m.Dim)
			}
			if values.Len() == 0 {
				continue // an empty batch's float16 values have no buffer
			}
			widen := func(dst []float32, lo, hi int) int { // values [lo, hi) into dst
				switch vals := values.(type) {
				case *array.Float32:
					return copy(dst, vals.Float32Values()[lo:hi])
				case *array.Float16:
					h := arrow.Uint16Traits.CastFromBytes(vals.Data().Buffers()[1].Bytes())
					off := vals.Data().Offset()
					half.ToFloat32s(dst, h[off+lo:off+hi])
				}
				return hi - lo
			}
			if all {
				at += widen(m.Data[at:], 0, values.Len())
				continue
			}
			for _, j := range kept[i] {
				at += widen(m.Data[at:], j*m.Dim, (j+1)*m.Dim)
			}
		}
		ms[c] = m
	}
	return ms, nil
}

// Join pairs each row of m with its item in the shard manifest. Rows are a
// subsequence of the manifest (rejected images are missing), in order.
func Join(shardName string, s *dataset.Shard, m *Matrix) ([]dataset.Item, error) {
	items := make([]dataset.Item, 0, len(m.URIs))
	j := 0
	for _, uri := range m.URIs {
		for j < len(s.Items) && s.Items[j].Key != uri {
			j++
		}
		if j == len(s.Items) {
			return nil, fmt.Errorf("features: row for %q is not in shard %s in order: the feature file does not match the manifest", uri, shardName)
		}
		items = append(items, s.Items[j])
		j++
	}
	return items, nil
}
