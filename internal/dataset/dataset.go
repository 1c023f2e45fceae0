// Package dataset lists labeled images in blob storage and cuts them into
// shards.
//
// A dataset is an ImageFolder prefix (prefix/<label>/<file>, the torchvision
// convention) or a manifest: a CSV file with a header naming at least the
// columns uri and label (and optionally domain), or a Parquet file (name
// ending in .parquet) with such columns, of string or integer type, or a
// WebDataset: .tar archives whose samples pair an image member with a .cls
// label (see package webdataset). An archive member's Key names its byte
// range in the archive, and reads of it (store.Buckets.ReadAll) fetch just
// that range.
//
// # URLs
//
// A prefix or a manifest is a key in the worker's bucket, or an absolute
// URL of any linked gocloud scheme (s3://bucket/path?region=…,
// file:///dir/…), opened beside the worker's bucket (see store.SplitURL
// for how a URL splits into bucket and key). A manifest's
// uri is relative to the manifest's folder (in the manifest's bucket),
// /key for a key in the worker's bucket, or an absolute URL. An item's Key
// is then a key in the worker's bucket, or an absolute URL.
//
// Shard boundaries are content-defined: a shard ends after an image whose
// key hashes to 0 modulo the target size. Adding images to a growing pool
// therefore changes only the shards they land in, and a recurring pass finds
// every other shard's features in the cache.
package dataset

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/apache/arrow/go/v15/arrow/memory"
	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/semaphore"
	"golang.org/x/text/unicode/norm"

	"dcd/internal/ahead"
	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// Item is one image of a dataset.
type Item struct {
	ID int64 // position in the dataset's listing order
	// Key is the object's key in the worker's bucket, or an absolute URL
	// (scheme://bucket/key?query) when the image lives elsewhere.
	Key    string
	Label  string
	Domain string // ground-truth domain, when a manifest gives one
	// Version changes when the object does: size and modification time
	// for listed objects; a manifest's version column (an ETag, a hash),
	// or empty where it has none and its images are taken to be immutable.
	Version string
}

// ManifestURI is how a manifest written in the worker's bucket refers to
// key: /key for a key of that bucket, the URL itself for an absolute URL.
func ManifestURI(key string) string {
	if store.IsURL(key) {
		return key
	}
	return "/" + key
}

// Source is where datasets are read from.
type Source struct {
	// Bucket is the worker's bucket: plain keys and /keys are read there.
	Bucket *blob.Bucket
	// Buckets opens the buckets that absolute URLs name. Nil: they are
	// opened for one Walk and closed after it.
	Buckets *store.Buckets
	// Mem allocates while Parquet manifests are read. Nil: the Go allocator.
	Mem memory.Allocator
	// URL is Bucket's URL, when known: a pack compares its output, a key
	// or a URL, with the dataset's prefix, the other, through it.
	URL string
}

// Walk calls fn for every image of ds, in key order for prefixes and in file
// order for manifests. Keys and URLs are resolved against the bucket b.
func Walk(ctx context.Context, b *blob.Bucket, ds schemas.Dataset, fn func(Item) error) error {
	return Source{Bucket: b}.Walk(ctx, ds, fn)
}

// ownBuckets gives s a set of buckets of its own, for one call, when it has
// none to share; the returned func closes it.
func (s *Source) ownBuckets() (closeOwn func()) {
	if s.Buckets != nil {
		return func() {}
	}
	s.Buckets = &store.Buckets{}
	return func() { s.Buckets.Close() }
}

// Walk calls fn for every image of ds, in key order for prefixes and in file
// order for manifests.
func (s Source) Walk(ctx context.Context, ds schemas.Dataset, fn func(Item) error) error {
	return s.WalkFrom(ctx, ds, &Mark{}, fn)
}

// WalkFrom is Walk going on from the Mark at, which it moves past each
// item before it calls fn with it: after an error, at is where the walk
// stood after the last item fn was given.
func (s Source) WalkFrom(ctx context.Context, ds schemas.Dataset, at *Mark, fn func(Item) error) error {
	defer s.ownBuckets()()
	if s.Mem == nil {
		s.Mem = memory.NewGoAllocator()
	}
	switch {
	case ds.Manifest != "":
		return s.walkManifest(ctx, ds.Manifest, at, fn)
	case ds.WebDataset != "":
		return s.walkWebDataset(ctx, ds.WebDataset, at, fn)
	}
	return s.walkPrefix(ctx, ds.Prefix, at, fn)
}

// locate finds where ref (a key or an absolute URL) lives: the bucket, the
// key in it, and the bucket's URL ("" for the worker's bucket).
func (s Source) locate(ctx context.Context, ref string) (b *blob.Bucket, key, bucketURL string, err error) {
	if !store.IsURL(ref) {
		return s.Bucket, ref, "", nil
	}
	bucketURL, key, err = store.SplitURL(ref)
	if err != nil {
		return nil, "", "", err
	}
	b, err = s.Buckets.Open(ctx, bucketURL)
	return b, key, bucketURL, err
}

// itemKey is how an item refers to key of the bucket at bucketURL.
func itemKey(bucketURL, key string) (string, error) {
	if bucketURL == "" {
		return key, nil
	}
	return store.JoinURL(bucketURL, key)
}

func (s Source) walkPrefix(ctx context.Context, ref string, at *Mark, fn func(Item) error) error {
	b, prefix, bucketURL, err := s.locate(ctx, ref)
	if err != nil {
		return fmt.Errorf("dataset: prefix %q: %w", redact.URL(ref), err)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	from := ""
	if at.Key != "" {
		from = at.Key + "\x00" // the least key after it
	}
	id := at.Next
	whole := id == 0 // listed from its first file
	// A file right in its <label>/ folder is the class's image, whatever
	// its name (its bytes say what it is); an image file deeper down is
	// the class's too, as torchvision's ImageFolder has it, but not the
	// annotations and notes such folders hold (only names ending as an
	// image's). But where no file is right in its <label>/ folder
	// (direct), and there is but one such folder, the prefix is likely a
	// folder too high (nest/ of nest/digits/3/a.png), whose subfolders
	// would be taken for classes; deeper is the first file below
	// <label>/<file>, to name.
	var direct bool
	var deeper string
	labels := map[string]bool{}
	err = list(ctx, b, prefix, from, ref, func(obj *blob.ListObject) error {
		rel := strings.TrimPrefix(obj.Key, prefix)
		label, file, ok := strings.Cut(rel, "/")
		if !ok && !strings.HasPrefix(rel, ".") && store.LinkedFolder(ctx, b, obj) {
			return fmt.Errorf("dataset: prefix %q: %q is a symbolic link to a folder or to nothing, which a file:// bucket does not list into: %w", redact.URL(ref), obj.Key, store.ErrLinkedFolder)
		}
		if !ok || file == "" || strings.HasSuffix(file, "/") || strings.HasPrefix(label, ".") || strings.HasPrefix(file, ".") || strings.Contains(file, "/.") || osJunk[strings.ToLower(path.Base(file))] {
			return nil // not a file under a <label>/ folder (a stray file, a folder's marker object), hidden (.ipynb_checkpoints, ._x.png), or Windows' own
		}
		nested := strings.Contains(file, "/")
		if nested && !webdataset.IsImageExt(strings.ToLower(strings.TrimPrefix(path.Ext(file), "."))) {
			return nil
		}
		if !nested {
			direct = true
		} else if deeper == "" {
			deeper = obj.Key
		}
		if len(labels) < 2 {
			labels[label] = true
		}
		key, err := itemKey(bucketURL, obj.Key)
		if err != nil {
			return fmt.Errorf("dataset: prefix %q: %w", redact.URL(ref), err)
		}
		at.Next, at.Key = id+1, obj.Key
		if err := fn(Item{ID: id, Key: key, Label: Label(label), Version: version(obj)}); err != nil {
			return err
		}
		id++
		return nil
	})
	if err != nil {
		return err
	}
	if whole && !direct && deeper != "" && len(labels) == 1 {
		folder, _, _ := strings.Cut(strings.TrimPrefix(deeper, prefix), "/")
		file, ferr := itemKey(bucketURL, deeper)
		p, perr := itemKey(bucketURL, prefix+folder+"/")
		if ferr == nil && perr == nil {
			return fmt.Errorf("dataset: prefix %q holds no images in <label>/<file> layout, only files deeper, such as %q: if %q holds the <label> folders, give it as the prefix", redact.URL(ref), file, p)
		}
	}
	if id == 0 {
		return fmt.Errorf("dataset: prefix %q holds no images in <label>/<file> layout%s", redact.URL(ref), patternHint(ref))
	}
	return nil
}

// patternHint says, of a dataset found empty or missing, that the
// wildcards or braces in its name (shard-{000..099}.tar, *.parquet, as
// WebDataset and Spark users write them) are not expanded.
func patternHint(ref string) string {
	p := ref
	if store.IsURL(p) {
		if q := strings.IndexByte(p, '?'); q >= 0 {
			p = p[:q]
		}
	}
	if !strings.ContainsAny(p, "*{[") {
		return ""
	}
	return ": DCD expands no wildcards or braces; a webdataset names the folder holding its archives (every .tar under it is read), a manifest one file"
}

// ListVersion is the version of the rules for what a dataset's items are
// (webdataset.WalkVersion is an archive's): a plan resumed from a
// checkpoint made under others starts over. Bumped with each change to
// them (2: an ImageFolder's nested image files, a CSV's blank rows).
const ListVersion = 2

// osJunk are the files Windows leaves in image folders, which would be
// rejects of every class (and fail an E_sample, whose every image must
// embed).
var osJunk = map[string]bool{"thumbs.db": true, "ehthumbs.db": true, "desktop.ini": true}

// list calls fn for every object under prefix of b from the key from on,
// in key order, listing folders ahead (store.ListFolders: an ImageFolder's
// labels, archives kept in folders); ref names the listing in errors.
func list(ctx context.Context, b *blob.Bucket, prefix, from, ref string, fn func(*blob.ListObject) error) error {
	var fnErr error
	err := store.ListFolders(ctx, b, prefix, from, func(obj *blob.ListObject) error {
		fnErr = fn(obj)
		return fnErr
	})
	if err != nil && err != fnErr {
		return fmt.Errorf("dataset: list %q: %w", redact.URL(ref), err)
	}
	return err
}

// version identifies a listed object's content: its size and modification
// time, and its MD5 where the store gives one (S3's ETag of a single-part
// upload): S3 keeps times to the second, and a relabelled tar keeps its
// size (members are padded to 512 bytes), so an archive packed again
// within a second would otherwise look unchanged.
func version(obj *blob.ListObject) string {
	v := strconv.FormatInt(obj.Size, 10) + ":" + strconv.FormatInt(obj.ModTime.UnixNano(), 10)
	if len(obj.MD5) > 0 {
		v += ":" + hex.EncodeToString(obj.MD5)
	}
	return v
}

// ArchivesAhead is how many archives' sample lists a WebDataset's walk
// reads ahead of the one it lists, and archiveBytes how many bytes of the
// archives whose lists it has not cached it reads at once, each counted as
// at most an eighth of them. Read whole, 64 archives of 500 MB sharing the
// worker's link would all end together, minutes on, the first's samples
// with them; under the limit eight at a time take it (one object store
// stream carries about 100 MB/s, so a fast link wants several), while
// small ones, bound by the store's latency, still go 64 at once. They take
// the limit in the order their cache lookups missed, which is about the
// walk's.
const (
	ArchivesAhead = 64
	archiveBytes  = 2 << 30
)

// compressedTar says whether an object named name is a tar archive other
// than the uncompressed .tar named in lower case that a WebDataset is read
// from: A.TAR, a.tar.gz, a.tar.xz, a.tgz, … (notTar says so).
func compressedTar(name string) bool {
	lower := strings.ToLower(name)
	if strings.HasSuffix(name, ".tar") {
		return false
	}
	for _, ext := range []string{".tar", ".tgz", ".tbz", ".tbz2", ".txz", ".tzst", ".tlz"} {
		if strings.HasSuffix(lower, ext) {
			return true
		}
	}
	// a.tar.<anything>, but a file about an archive beside it (its
	// checksum, an index), which is passed over as before.
	if i := strings.LastIndex(lower, ".tar."); i >= 0 {
		switch lower[i+len(".tar."):] {
		case "sha256", "sha512", "sha1", "md5", "sum", "idx", "index", "json", "txt", "sig", "asc":
			return false
		}
		return true
	}
	return false
}

const notTar = "is not an uncompressed .tar (named in lower case), the archives DCD reads: decompress or rename it, or move it out of the dataset"

// walkWebDataset reads every .tar archive under ref (or the one archive ref
// names) in key order, once through, for its samples and their byte ranges.
// An item is versioned by its archive's size and modification time.
func (s Source) walkWebDataset(ctx context.Context, ref string, at *Mark, fn func(Item) error) error {
	b, prefix, bucketURL, err := s.locate(ctx, ref)
	if err != nil {
		return fmt.Errorf("dataset: webdataset %q: %w", redact.URL(ref), err)
	}
	if !strings.HasSuffix(prefix, "/") && compressedTar(path.Base(prefix)) {
		return fmt.Errorf("dataset: webdataset %q %s", redact.URL(ref), notTar)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") && !strings.HasSuffix(prefix, ".tar") {
		prefix += "/"
	}
	archives := 0
	one := strings.HasSuffix(prefix, ".tar") // one archive, not every key it begins
	reading := semaphore.NewWeighted(archiveBytes)
	from := at.Key // the mark's archive, whose samples before the mark are skipped below
	lists := ahead.Stream(ctx, ArchivesAhead, func(ctx context.Context, start func(ahead.Fetch[archiveList]) bool) error {
		return list(ctx, b, prefix, from, ref, func(obj *blob.ListObject) error {
			name := path.Base(obj.Key)
			if one && obj.Key != prefix || strings.HasPrefix(name, ".") {
				return nil
			}
			if compressedTar(name) {
				// Left out, its samples would be missing unsaid.
				return fmt.Errorf("dataset: webdataset %q: %s %s", redact.URL(ref), obj.Key, notTar)
			}
			if !strings.HasSuffix(name, ".tar") {
				return nil
			}
			archives++
			archive, err := itemKey(bucketURL, obj.Key)
			if err != nil {
				return fmt.Errorf("dataset: webdataset %q: %w", redact.URL(ref), err)
			}
			v := version(obj)
			if !start(func(ctx context.Context) (archiveList, error) {
				samples, err := s.samples(ctx, b, obj, archive, v, reading)
				return archiveList{obj.Key, v, samples}, err
			}) {
				return ctx.Err()
			}
			return nil
		})
	}, nil)
	defer lists.Stop()
	id := at.Next
	whole, labeled := id == 0, 0 // whole: walked from its first sample
	for {
		l, err := lists.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		first := 0
		if l.key == from {
			// A sample's place in another version of its archive means
			// nothing: the mark's archive was rewritten since.
			if at.Version != "" && at.Version != l.version {
				return fmt.Errorf("dataset: webdataset %q: archive %s: %w", redact.URL(ref), l.key, ErrChanged)
			}
			first = min(at.Sample, len(l.samples))
		}
		for j, sm := range l.samples[first:] {
			at.Next, at.Key, at.Sample, at.Version = id+1, l.key, first+j+1, l.version
			if err := fn(Item{ID: id, Key: sm.Image.Key(), Label: Label(sm.Label), Domain: sm.Domain, Version: l.version}); err != nil {
				return err
			}
			if sm.Label != "" {
				labeled++
			}
			id++
		}
	}
	switch {
	case id == 0:
		return fmt.Errorf("dataset: webdataset %q holds no samples with an image (%d .tar archives)%s", redact.URL(ref), archives, patternHint(ref))
	case whole && labeled == 0:
		// Taken for images without labels, such a dataset would be
		// embedded whole before any use of it failed for want of them.
		return fmt.Errorf("dataset: webdataset %q: none of its %d samples with an image has a .cls label (or all are empty); a sample's label is its <key>.cls, holding the class name (one in a .json or .txt member, as img2dataset writes them, is not read)", redact.URL(ref), id)
	}
	return nil
}

// archiveList is the samples of one version of an archive, at key.
type archiveList struct {
	key, version string
	samples      []webdataset.Sample
}

// samples lists the samples of one version of an archive (obj in b, named
// archive in items). Listing reads the whole archive, so the list is cached
// in the worker's bucket (IndexKey), and a recurring pass over an unchanged
// pool reads only the indexes. An archive is read holding its size of
// reading.
func (s Source) samples(ctx context.Context, b *blob.Bucket, obj *blob.ListObject, archive, version string, reading *semaphore.Weighted) ([]webdataset.Sample, error) {
	ik := IndexKey(archive, version)
	if data, err := s.Bucket.ReadAll(ctx, ik); err == nil {
		if samples, err := parseIndex(archive, data); err == nil {
			return samples, nil
		} // a damaged index is rebuilt
	}
	n := min(obj.Size, archiveBytes/8)
	if err := reading.Acquire(ctx, n); err != nil {
		return nil, err
	}
	defer reading.Release(n)
	r, err := b.NewReader(ctx, obj.Key, nil)
	if err != nil {
		return nil, fmt.Errorf("dataset: webdataset %q: %w", redact.URL(archive), err)
	}
	defer r.Close()
	var samples []webdataset.Sample
	if err := webdataset.Walk(store.Body(r), archive, func(sm webdataset.Sample) error {
		samples = append(samples, sm)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("dataset: %w", err)
	}
	if err := store.WriteAll(ctx, s.Bucket, ik, marshalIndex(samples)); err != nil {
		return nil, fmt.Errorf("dataset: webdataset %q: %w", redact.URL(archive), &IndexWriteError{Key: ik, Err: err})
	}
	return samples, nil
}

// IndexWriteError is a failed write of an archive's index to the cache in
// Source.Bucket, the worker's own bucket: the store's fault, nothing of the
// dataset to fix.
type IndexWriteError struct {
	Key string
	Err error
}

func (e *IndexWriteError) Error() string {
	return fmt.Sprintf("cache its index at %s: %v", e.Key, e.Err)
}
func (e *IndexWriteError) Unwrap() error { return e.Err }

// IndexKey is where the sample list of one version of an archive is
// cached, as Walk's rules of this version make it.
func IndexKey(archive, version string) string {
	h := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%s\x00%d", archive, version, webdataset.WalkVersion)))
	return "webdataset/" + hex.EncodeToString(h[:16]) + ".csv"
}

var indexHeader = []string{"name", "offset", "size", "label", "domain"}

func marshalIndex(samples []webdataset.Sample) []byte {
	var sb strings.Builder
	w := csv.NewWriter(&sb)
	w.Write(indexHeader)
	for _, sm := range samples {
		m := sm.Image
		w.Write([]string{m.Name, strconv.FormatInt(m.Offset, 10), strconv.FormatInt(m.Size, 10), sm.Label, sm.Domain})
	}
	w.Flush()
	return []byte(sb.String())
}

func parseIndex(archive string, data []byte) ([]webdataset.Sample, error) {
	recs, err := csv.NewReader(strings.NewReader(string(data))).ReadAll()
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 || !slices.Equal(recs[0], indexHeader) {
		return nil, errors.New("not an index")
	}
	samples := make([]webdataset.Sample, 0, len(recs)-1)
	for _, r := range recs[1:] {
		off, err1 := strconv.ParseInt(r[1], 10, 64)
		size, err2 := strconv.ParseInt(r[2], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		samples = append(samples, webdataset.Sample{
			Image: webdataset.Member{Archive: archive, Name: r[0], Offset: off, Size: size}, Label: r[3], Domain: r[4]})
	}
	return samples, nil
}

// row is one manifest entry as written; where names it in errors ("line 3",
// "row 3").
type row struct {
	uri, label, domain, version string
	where                       string
}

// walkManifest walks a CSV or Parquet manifest from at on: the readers
// move at's place in the file (Offset and Line, or Next, the row) past
// each row before they emit it.
func (s Source) walkManifest(ctx context.Context, ref string, at *Mark, fn func(Item) error) error {
	b, key, bucketURL, err := s.locate(ctx, ref)
	if err != nil {
		return fmt.Errorf("dataset: manifest %q: %w", redact.URL(ref), err)
	}
	dir := path.Dir(key)
	id := at.Next
	emit := func(r row) error {
		k, err := resolve(r.uri, dir, bucketURL)
		if err != nil {
			return done{fmt.Errorf("dataset: manifest %q %s: %w", redact.URL(ref), r.where, err)}
		}
		at.Next = id + 1
		// Spaces around a label or a domain are no part of it, as a
		// pack's .cls files and a WebDataset's have it.
		if err := fn(Item{ID: id, Key: k, Label: Label(r.label), Domain: strings.TrimSpace(r.domain), Version: r.version}); err != nil {
			return done{err}
		}
		id++
		return nil
	}
	if strings.HasSuffix(strings.ToLower(key), ".parquet") {
		err = s.readParquet(ctx, b, key, at, emit)
	} else {
		err = readCSV(ctx, b, key, at, emit)
	}
	if d, ok := err.(done); ok {
		return d.err
	}
	if gcerrors.Code(err) == gcerrors.NotFound && isFolder(ctx, b, key) {
		// Not found as a file, a folder fails as a stat of a name
		// fileblob escaped (pool__0x2f__), or as a key S3 lacks.
		return fmt.Errorf("dataset: manifest %q is a folder, not a manifest file: name the .csv or .parquet file in it, or, for images in <label>/<file> folders (an ImageFolder), give the folder as the dataset's prefix: instead", redact.URL(ref))
	}
	if err != nil {
		if gcerrors.Code(err) == gcerrors.NotFound {
			return fmt.Errorf("dataset: manifest %q: %w%s", redact.URL(ref), err, patternHint(ref))
		}
		return fmt.Errorf("dataset: manifest %q: %w", redact.URL(ref), err)
	}
	if id == 0 {
		return fmt.Errorf("dataset: manifest %q lists no images", redact.URL(ref))
	}
	return nil
}

// isFolder says whether key, with or without its trailing "/", has objects
// under it.
func isFolder(ctx context.Context, b *blob.Bucket, key string) bool {
	_, err := b.List(&blob.ListOptions{Prefix: strings.TrimSuffix(key, "/") + "/"}).Next(ctx)
	return err == nil
}

// done carries an error of emit through the manifest readers unchanged:
// it names the manifest already, or it is fn's own.
type done struct{ err error }

func (d done) Error() string { return d.err.Error() }

// resolve turns a manifest's uri into an item key: an absolute URL as it
// is, /key as a key of the worker's bucket, anything else relative to the
// manifest's folder dir in the manifest's bucket (bucketURL, "" for the
// worker's).
func resolve(uri, dir, bucketURL string) (string, error) {
	switch {
	case uri == "":
		return "", errors.New("empty uri")
	case store.IsURL(uri):
		ref := uri
		if m, ok := webdataset.ParseKey(uri); ok {
			ref = m.Archive // a member's name is not part of a URL: "#50%off.png" is no escape
		}
		if _, _, err := store.SplitURL(ref); err != nil {
			return "", err
		}
		return uri, nil
	case strings.HasPrefix(uri, "/"):
		// One slash marks a key of the bucket, which may itself begin
		// with "/" (an S3 key can): ManifestURI writes it so.
		return uri[1:], nil
	}
	m, member := webdataset.ParseKey(uri)
	if member {
		uri = m.Archive // its name is no part of a path, nor of a URL
	}
	k := path.Join(dir, uri)
	if k == ".." || strings.HasPrefix(k, "../") {
		return "", fmt.Errorf("uri %q leaves the bucket", uri)
	}
	k, err := itemKey(bucketURL, k)
	if member {
		m.Archive = k
		k = m.Key()
	}
	return k, err
}

// manifestColumns are the positions of a manifest's columns; -1 for an
// optional one it lacks.
type manifestColumns struct{ uri, label, domain, version int }

// columns finds the uri and label columns, and the optional domain and
// version, among names, ignoring case and spaces.
// Label is a dataset's label as a class is compared with it: without the
// spaces around it, and in Unicode's composed form (NFC), which a folder
// named on macOS (decomposed: "e" and a combining accent for "é") is not
// while the classes a config lists usually are.
func Label(s string) string { return norm.NFC.String(strings.TrimSpace(s)) }

// Classes is a list of classes indexed by label: a label is looked up
// once per image, among as many as tens of thousands of classes.
type Classes struct {
	names []string
	index map[string]int
}

// NewClasses indexes names; the first of a repeated name is its class.
func NewClasses(names []string) Classes {
	index := make(map[string]int, len(names))
	for i, n := range names {
		if _, ok := index[n]; !ok {
			index[n] = i
		}
	}
	return Classes{names, index}
}

// Index is label's class, or -1 when it is none.
func (c Classes) Index(label string) int {
	if i, ok := c.index[label]; ok {
		return i
	}
	return -1
}

// Len is how many classes there are.
func (c Classes) Len() int { return len(c.names) }

// String lists the classes for an error: the first few, and how many
// there are in all, not a message of tens of thousands of names.
func (c Classes) String() string {
	const shown = 10
	if len(c.names) <= shown {
		return fmt.Sprintf("%q", c.names)
	}
	return fmt.Sprintf("%q and %d more", c.names[:shown], len(c.names)-shown)
}

// renameHint names a column that holds what a missing uri or label does
// under another name, as other tools write them (Hugging Face's
// metadata.csv file_name, a "path", "class" or "target"), to rename.
func renameHint(col map[string]int, c manifestColumns) string {
	var hints []string
	for _, want := range []struct {
		name    string
		missing bool
		aliases []string
	}{
		{"uri", c.uri < 0, []string{"file_name", "filename", "file", "path", "filepath", "file_path", "image", "image_path", "img", "url", "image_url"}},
		{"label", c.label < 0, []string{"labels", "class", "class_name", "category", "target", "y"}},
	} {
		if !want.missing {
			continue
		}
		for _, a := range want.aliases {
			if _, ok := col[a]; ok {
				hints = append(hints, fmt.Sprintf("%q to %s", a, want.name))
				break
			}
		}
	}
	if len(hints) == 0 {
		return ""
	}
	return ": rename " + strings.Join(hints, " and ")
}

// manifestNames are the columns of a manifest DCD reads.
var manifestNames = []string{"uri", "label", "domain", "version"}

func columns(names []string) (manifestColumns, error) {
	col := map[string]int{}
	for i, h := range names {
		name := strings.TrimSpace(strings.ToLower(h))
		if j, ok := col[name]; ok && slices.Contains(manifestNames, name) {
			// Which one is meant (a label column and its correction)
			// is not for DCD to guess; two of a column it does not read
			// are none of its business.
			return manifestColumns{}, fmt.Errorf("columns %d and %d are both %q", j+1, i+1, name)
		}
		col[name] = i
	}
	at := func(name string) int {
		if i, ok := col[name]; ok {
			return i
		}
		return -1
	}
	c := manifestColumns{uri: at("uri"), label: at("label"), domain: at("domain"), version: at("version")}
	if c.uri < 0 || c.label < 0 {
		shown := names[:min(len(names), 20)]
		more := ""
		if len(names) > len(shown) {
			more = fmt.Sprintf(" and %d more", len(names)-len(shown))
		}
		return c, fmt.Errorf("columns %q%s must include uri and label%s", shown, more, renameHint(col, c))
	}
	return c, nil
}

// readCSV emits a CSV manifest's rows from at on, moving at's Offset and
// Line past each row before it emits it. From a mark it reads the header
// for its columns, then the rows from the mark's offset on.
func readCSV(ctx context.Context, b *blob.Bucket, key string, at *Mark, emit func(row) error) (err error) {
	r, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return err
	}
	defer func() { r.Close() }()
	version := strconv.FormatInt(r.Size(), 10) + ":" + strconv.FormatInt(r.ModTime().UnixNano(), 10)
	if at.Offset > 0 && at.Version != version {
		return ErrChanged
	}
	if at.Offset > 0 && at.Offset >= r.Size() {
		return nil // every row walked: S3, GCS and Azure refuse a range from the end
	}
	// Where cr began in the file: offsets and lines are cr's plus these.
	var offset int64
	var lines int
	// Excel's "CSV UTF-8" (and Python's utf-8-sig) begins with a
	// byte-order mark, which the header's first field, quoted, must not
	// begin with.
	br := bufio.NewReader(store.Body(r))
	if bom, _ := br.Peek(3); string(bom) == "\ufeff" {
		br.Discard(3)
		offset = 3
	}
	// Read as CSV, such a file fails as a quote left open or a header of
	// binary: say what it is.
	switch magic, _ := br.Peek(4); {
	case string(magic) == "PAR1":
		return errors.New("a Parquet file: name it *.parquet, which is how a Parquet manifest is told from a CSV one")
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		return errors.New("a gzip file: decompress it; a CSV manifest is read as it is stored")
	case len(magic) >= 2 && (magic[0] == 0xff && magic[1] == 0xfe || magic[0] == 0xfe && magic[1] == 0xff),
		len(magic) == 4 && (magic[1] == 0 && magic[3] == 0 || magic[0] == 0 && magic[2] == 0):
		return errors.New("a UTF-16 file (Excel's \"Unicode text\", PowerShell's default): save it as UTF-8")
	case jsonAhead(br):
		return errors.New("a JSON or JSON Lines file, which is no manifest format DCD reads: write a CSV with a header naming its columns (uri,label[,domain][,version]), or a Parquet file named *.parquet")
	}
	cr := boundedCSV(br)
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return errors.New("the file is empty: a manifest begins with a header line naming its columns, uri and label at least (uri,label)")
	}
	if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	if slices.ContainsFunc(header, func(f string) bool { return strings.Contains(f, "\r") }) {
		// Read as CSV, the whole file is its header line.
		return errors.New("its lines end in CR alone (classic Mac OS): save it with LF or CRLF line ends")
	}
	if len(header) == 1 {
		for _, sep := range []string{";", "\t", "|"} {
			if strings.Contains(header[0], sep) {
				// Excel's CSV where the decimal mark is a comma, a TSV.
				return fmt.Errorf("header: one column, %q, whose names are separated by %q: a manifest's columns are separated by commas; save it as comma-separated", header[0], sep)
			}
		}
	}
	c, err := columns(header)
	if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	if at.Offset > 0 {
		var rest *blob.Reader
		if rest, err = b.NewRangeReader(ctx, key, at.Offset, -1, nil); err != nil {
			return err
		}
		r.Close()
		r = rest
		fields := len(header)
		cr = boundedCSV(store.Body(r))
		cr.FieldsPerRecord = fields
		offset, lines = at.Offset, at.Line
		defer func() {
			if pe, ok := errors.AsType[*csv.ParseError](err); ok {
				pe.StartLine, pe.Line = pe.StartLine+lines, pe.Line+lines
			}
		}()
	}
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if errors.Is(err, errLongRecord) {
			return fmt.Errorf("the row after line %d: %w", max(at.Line, 1), err) // at.Line: the last row's, in the file
		}
		if err != nil {
			return err
		}
		line, _ := cr.FieldPos(0)
		last, _ := cr.FieldPos(len(rec) - 1)
		// The row ends on its last field's line, plus the lines that field
		// holds, quoted.
		at.Offset, at.Line, at.Version = offset+cr.InputOffset(), lines+last+strings.Count(rec[len(rec)-1], "\n"), version
		if !slices.ContainsFunc(rec, func(f string) bool { return strings.TrimSpace(f) != "" }) {
			continue // a row of empty fields (",,"), as Excel saves the blank rows under a table
		}
		// Spaces around a uri are the CSV's ("cat, cat/1.jpg"), not the key's.
		r := row{uri: strings.TrimSpace(rec[c.uri]), label: rec[c.label], where: fmt.Sprintf("line %d", lines+line)}
		if c.domain >= 0 {
			r.domain = rec[c.domain]
		}
		if c.version >= 0 {
			r.version = rec[c.version]
		}
		if err := emit(r); err != nil {
			return err
		}
	}
}

// jsonAhead reports whether br's first byte that is not white space
// (within its buffer) begins a JSON object or array. CSV readers skip
// blank lines, so a JSON file that starts with one would otherwise be read
// as a CSV whose header is its first object.
func jsonAhead(br *bufio.Reader) bool {
	head, _ := br.Peek(br.Size())
	head = bytes.TrimLeft(head, " \t\r\n")
	return len(head) > 0 && (head[0] == '{' || head[0] == '[')
}

// boundedCSV is a CSV reader of r, reusing its records, that fails
// (errLongRecord) on a record of more than recordLimit bytes: a quote left
// open, or a file whose lines end in CR alone, would otherwise make the
// rest of the file one record, read into memory whole.
func boundedCSV(r io.Reader) *csvReader {
	b := &boundedRecords{r: r}
	cr := csv.NewReader(b)
	cr.ReuseRecord = true
	return &csvReader{cr, b}
}

// recordLimit is the longest CSV record a manifest may hold.
const recordLimit = 1 << 20

var errLongRecord = fmt.Errorf("a row longer than %d bytes: a quote left open, or lines that end in CR alone?", recordLimit)

type csvReader struct {
	*csv.Reader
	b *boundedRecords
}

func (c *csvReader) Read() ([]string, error) {
	rec, err := c.Reader.Read()
	c.b.start = c.InputOffset()
	return rec, err
}

// boundedRecords reads r for a csv.Reader, refusing to read on once the
// record under way (from start, where the last one ended) passes
// recordLimit.
type boundedRecords struct {
	r           io.Reader
	read, start int64
}

func (b *boundedRecords) Read(p []byte) (int, error) {
	if b.read-b.start > recordLimit {
		return 0, errLongRecord
	}
	n, err := b.r.Read(p)
	b.read += int64(n)
	return n, err
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

// EndsShard reports whether a pass's shard of mean size `size` ends after
// the item with this key, its n-th: at a Boundary, or at MaxShard times
// the size. A dataset cut this way keeps its shards, and so their cached
// features, when items are added elsewhere in it.
func EndsShard(key string, n, size int) bool {
	return Boundary(key, size) || n >= MaxShard*size
}

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
	if s, ok := parsePlain(data); ok {
		return s, nil
	}
	return parseCSV(name, data)
}

// parsePlain parses a manifest in which Marshal quoted nothing (no field
// has a comma, quote, line break or leading space, as keys rarely do) by
// splitting its lines on commas, every field a slice of one copy of data:
// the CSV reader took 200 ns a row, most of a recurring pass's parsing of
// its pool's manifests, shard after shard. ok is false for anything else,
// which parseCSV reads, or names what is wrong with.
func parsePlain(data []byte) (s *Shard, ok bool) {
	if bytes.IndexByte(data, '"') >= 0 || bytes.IndexByte(data, '\r') >= 0 {
		return nil, false
	}
	header, rest, _ := strings.Cut(string(data), "\n")
	if header != plainHeader {
		return nil, false
	}
	s = &Shard{Items: make([]Item, 0, strings.Count(rest, "\n"))}
	for line := range strings.SplitSeq(rest, "\n") {
		if line == "" {
			continue // the last line's end; the CSV reader skips empty lines too
		}
		var f [4]string
		for i := range 4 {
			j := strings.IndexByte(line, ',')
			if j < 0 {
				return nil, false
			}
			f[i], line = line[:j], line[j+1:]
		}
		if strings.IndexByte(line, ',') >= 0 {
			return nil, false
		}
		id, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return nil, false
		}
		s.Items = append(s.Items, Item{ID: id, Key: f[1], Label: f[2], Domain: f[3], Version: line})
	}
	return s, true
}

// plainHeader is shardHeader as Marshal writes it.
var plainHeader = strings.Join(shardHeader, ",")

// parseCSV is ParseShard through the CSV reader.
func parseCSV(name string, data []byte) (*Shard, error) {
	r := csv.NewReader(bytes.NewReader(data))
	r.ReuseRecord = true // the fields are copied out as strings
	header, err := r.Read()
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("dataset: shard %q: %w", name, err)
	}
	if !slices.Equal(header, shardHeader) {
		return nil, fmt.Errorf("dataset: shard %q: header must be %q", name, shardHeader)
	}
	s := &Shard{Items: make([]Item, 0, bytes.Count(data, []byte{'\n'}))}
	for row := 1; ; row++ {
		rec, err := r.Read()
		if err == io.EOF {
			return s, nil
		}
		if err != nil {
			return nil, fmt.Errorf("dataset: shard %q: %w", name, err)
		}
		id, err := strconv.ParseInt(rec[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("dataset: shard %q row %d: id %q: %w", name, row, rec[0], err)
		}
		s.Items = append(s.Items, Item{ID: id, Key: rec[1], Label: rec[2], Domain: rec[3], Version: rec[4]})
	}
}

// Digest identifies the shard's image content (keys and versions, not ids or
// labels), so the features cache is shared by every pass that sees the same
// images, whatever their labels.
func (s *Shard) Digest() string {
	// The bytes hashed are each item's key, a NUL, its version and a
	// newline: cache keys depend on them, so they must not change. They
	// are gathered into one buffer first, as a Write per field costs
	// more than hashing them.
	h := sha256.New()
	buf := make([]byte, 0, 32<<10)
	for _, it := range s.Items {
		if len(buf)+len(it.Key)+len(it.Version)+2 > cap(buf) {
			h.Write(buf)
			buf = buf[:0]
		}
		buf = append(buf, it.Key...)
		buf = append(buf, 0)
		buf = append(buf, it.Version...)
		buf = append(buf, '\n')
	}
	h.Write(buf)
	return hex.EncodeToString(h.Sum(nil))[:32]
}
