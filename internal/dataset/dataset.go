// Package dataset lists labeled images in blob storage and cuts them into
// shards.
//
// A dataset is an ImageFolder prefix (prefix/<label>/<file>, the torchvision
// convention) or a CSV manifest with a header naming at least the columns
// uri and label (and optionally domain); a manifest's uris are relative to
// the manifest's folder.
//
// Shard boundaries are content-defined: a shard ends after an image whose
// key hashes to 0 modulo the target size. Adding images to a growing pool
// therefore changes only the shards they land in, and a recurring pass finds
// every other shard's features in the cache.
package dataset

import (
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"path"
	"strconv"
	"strings"

	"gocloud.dev/blob"

	"dcd/schemas"
)

// Item is one image of a dataset.
type Item struct {
	ID     int64  // position in the dataset's listing order
	Key    string // object key in the bucket
	Label  string
	Domain string // ground-truth domain, when a manifest gives one
	// Version changes when the object does (size and modification time for
	// listed objects); empty for manifest entries, whose keys are taken to
	// be immutable.
	Version string
}

// Walk calls fn for every image of ds, in key order for prefixes and in file
// order for manifests.
func Walk(ctx context.Context, b *blob.Bucket, ds schemas.Dataset, fn func(Item) error) error {
	if ds.Manifest != "" {
		return walkManifest(ctx, b, ds.Manifest, fn)
	}
	return walkPrefix(ctx, b, ds.Prefix, fn)
}

func walkPrefix(ctx context.Context, b *blob.Bucket, prefix string, fn func(Item) error) error {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	it := b.List(&blob.ListOptions{Prefix: prefix})
	var id int64
	for {
		obj, err := it.Next(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("dataset: list %q: %w", prefix, err)
		}
		if obj.IsDir {
			continue
		}
		rel := strings.TrimPrefix(obj.Key, prefix)
		label, file, ok := strings.Cut(rel, "/")
		if !ok || strings.Contains(file, "/") || strings.HasPrefix(path.Base(file), ".") {
			continue // not <label>/<file>: a stray file or a nested folder
		}
		item := Item{ID: id, Key: obj.Key, Label: label,
			Version: strconv.FormatInt(obj.Size, 10) + ":" + strconv.FormatInt(obj.ModTime.UnixNano(), 10)}
		if err := fn(item); err != nil {
			return err
		}
		id++
	}
	if id == 0 {
		return fmt.Errorf("dataset: prefix %q holds no images in <label>/<file> layout", prefix)
	}
	return nil
}

func walkManifest(ctx context.Context, b *blob.Bucket, key string, fn func(Item) error) error {
	r, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return fmt.Errorf("dataset: manifest %q: %w", key, err)
	}
	defer r.Close()
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err != nil {
		return fmt.Errorf("dataset: manifest %q: header: %w", key, err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimSpace(strings.ToLower(h))] = i
	}
	ui, okU := col["uri"]
	li, okL := col["label"]
	if !okU || !okL {
		return fmt.Errorf("dataset: manifest %q: header %q must name columns uri and label", key, header)
	}
	di, hasDomain := col["domain"]
	dir := path.Dir(key)
	var id int64
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("dataset: manifest %q: %w", key, err)
		}
		line, _ := cr.FieldPos(0)
		uri := rec[ui]
		if uri == "" {
			return fmt.Errorf("dataset: manifest %q line %d: empty uri", key, line)
		}
		if strings.Contains(uri, "://") {
			return fmt.Errorf("dataset: manifest %q line %d: uri %q: only keys in the pass's bucket are supported, relative to the manifest or starting with /", key, line, uri)
		}
		k := path.Join(dir, uri)
		if strings.HasPrefix(uri, "/") {
			k = strings.TrimPrefix(uri, "/")
		}
		item := Item{ID: id, Key: k, Label: rec[li]}
		if hasDomain {
			item.Domain = rec[di]
		}
		if err := fn(item); err != nil {
			return err
		}
		id++
	}
	if id == 0 {
		return fmt.Errorf("dataset: manifest %q lists no images", key)
	}
	return nil
}

// Boundary reports whether a shard of mean size `size` ends after key.
func Boundary(key string, size int) bool {
	h := fnv.New64a()
	h.Write([]byte(key))
	return h.Sum64()%uint64(size) == 0
}

// MaxShard bounds a shard at this multiple of the target size, so an
// unlucky run of hashes cannot make one shard huge.
const MaxShard = 4

// Shard is one shard manifest: a slice of a dataset's items.
type Shard struct {
	Items []Item
}

var shardHeader = []string{"id", "key", "label", "domain", "version"}

// Marshal encodes the shard as CSV.
func (s *Shard) Marshal() []byte {
	var sb strings.Builder
	w := csv.NewWriter(&sb)
	w.Write(shardHeader)
	for _, it := range s.Items {
		w.Write([]string{strconv.FormatInt(it.ID, 10), it.Key, it.Label, it.Domain, it.Version})
	}
	w.Flush()
	return []byte(sb.String())
}

// ParseShard decodes a shard manifest written by Marshal; name is used in
// errors.
func ParseShard(name string, data []byte) (*Shard, error) {
	recs, err := csv.NewReader(strings.NewReader(string(data))).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("dataset: shard %q: %w", name, err)
	}
	if len(recs) == 0 || strings.Join(recs[0], ",") != strings.Join(shardHeader, ",") {
		return nil, fmt.Errorf("dataset: shard %q: header must be %q", name, shardHeader)
	}
	s := &Shard{}
	for i, r := range recs[1:] {
		id, err := strconv.ParseInt(r[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("dataset: shard %q row %d: id %q: %w", name, i+1, r[0], err)
		}
		s.Items = append(s.Items, Item{ID: id, Key: r[1], Label: r[2], Domain: r[3], Version: r[4]})
	}
	return s, nil
}

// Digest identifies the shard's image content (keys and versions, not ids or
// labels), so the features cache is shared by every pass that sees the same
// images, whatever their labels.
func (s *Shard) Digest() string {
	h := sha256.New()
	for _, it := range s.Items {
		fmt.Fprintf(h, "%s\x00%s\n", it.Key, it.Version)
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}
