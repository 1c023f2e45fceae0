package dataset

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"gocloud.dev/blob"
	"golang.org/x/sync/errgroup"

	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// PackOptions tunes Pack.
type PackOptions struct {
	// PerArchive is how many images each archive holds; 0 means 10,000.
	PerArchive int
	// Readers is how many images are read at once; 0 means 64. A store
	// answers each read after its latency, so a remote one needs many.
	// About as many images are held in memory.
	Readers int
	// Archived, when set, is called after each archive is written, with
	// the images in it and in the pack so far.
	Archived func(archive string, images, packed int)
}

// Packed is what Pack wrote.
type Packed struct {
	Archives []string // keys (or URLs) of the archives, in order
	Resumed  int      // of them written by an earlier, interrupted Pack
	Images   int
	Bytes    int64 // of the archives
	Skipped  []Skip
}

// Skip is a dataset image that Pack left out, and why.
type Skip struct {
	Item   int64 // the image's position in the dataset
	URI    string
	Reason string
}

// packFormats maps the content types http.DetectContentType sniffs to the
// member extension of each image format DCD decodes.
var packFormats = map[string]string{
	"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/bmp": "bmp", "image/webp": "webp",
}

// Pack copies the images of ds, with their labels and domains, into
// WebDataset archives under out (a key prefix in s.Bucket, or a URL):
// out/000000.tar, out/000001.tar, …, each of opt.PerArchive images in the
// dataset's order, named by their number in the pack (000000123.png).
// Beside each archive, out/000000.sources.csv maps its samples back to
// their images. A pool packed this way is read with one range read per MiB
// of an archive instead of one read per image.
//
// An image that cannot be read (gone, forbidden) or is not in a format DCD
// decodes (JPEG, PNG, GIF, BMP, WebP, sniffed from its bytes) is left out
// and listed in out/skipped.csv (and, for resuming, in a .skipped.csv
// beside the archive it would have been in) and in Packed.Skipped; any
// other read error stops the pack, naming the image.
//
// out must be empty, or hold a pack of the same dataset and PerArchive
// that was interrupted (out/pack.json says which): Pack then resumes after
// its last whole archive, and gives the archives an uninterrupted pack
// would have.
func (s Source) Pack(ctx context.Context, ds schemas.Dataset, out string, opt PackOptions) (Packed, error) {
	if ds.WebDataset != "" {
		return Packed{}, fmt.Errorf("dataset: pack: %q is packed already (a webdataset)", ds.WebDataset)
	}
	perArchive, readers := opt.PerArchive, opt.Readers
	if perArchive <= 0 {
		perArchive = 10000
	}
	if readers <= 0 {
		readers = 64
	}
	if s.Buckets == nil {
		s.Buckets = &store.Buckets{}
		defer s.Buckets.Close()
	}
	ob, prefix, obURL, err := s.locate(ctx, out)
	if err != nil {
		return Packed{}, fmt.Errorf("dataset: pack into %q: %w", out, err)
	}
	if prefix = strings.TrimSuffix(prefix, "/"); prefix != "" {
		prefix += "/"
	}
	a := &archiveWriter{bucket: ob, prefix: prefix, bucketURL: obURL}
	from, last, err := a.resume(ctx, ds, perArchive)
	if err != nil {
		return a.res, fmt.Errorf("dataset: pack into %q: %w", out, err)
	}

	// Images are read by readers goroutines and written in dataset order:
	// the walk queues each item twice, in order for the writer and as work
	// for a reader, and the queue's length bounds the images held, read or
	// being read, to about Readers: large photos must not fill memory.
	type image struct {
		item Item // its ID is its position in the dataset
		data []byte
		err  error
		done chan struct{}
	}
	g, gctx := errgroup.WithContext(ctx)
	a.ctx = gctx
	order, work := make(chan *image, readers), make(chan *image)
	g.Go(func() error {
		err := s.Walk(gctx, ds, func(it Item) error {
			switch {
			case it.ID == from-1 && it.Key != last:
				return fmt.Errorf("dataset: pack: the dataset changed since this pack began: image %d is %q, was %q; pack into an empty prefix", it.ID, it.Key, last)
			case it.ID < from:
				return nil // packed before the pack was interrupted
			}
			im := &image{item: it, done: make(chan struct{})}
			for _, q := range []chan *image{order, work} {
				select {
				case q <- im:
				case <-gctx.Done():
					return gctx.Err()
				}
			}
			return nil
		})
		close(work)
		if err == nil {
			close(order) // only a complete walk ends the last archive
		}
		return err
	})
	for range readers {
		g.Go(func() error {
			for im := range work {
				im.data, im.err = s.Buckets.ReadAll(gctx, s.Bucket, im.item.Key)
				close(im.done)
			}
			return nil
		})
	}
	g.Go(func() error {
		defer a.abort()
		for {
			var im *image
			select {
			case im = <-order:
			case <-gctx.Done():
				return gctx.Err()
			}
			if im == nil {
				return a.finish(opt.Archived)
			}
			select {
			case <-im.done:
			case <-gctx.Done(): // the walk may have stopped before queueing im's read
				return gctx.Err()
			}
			if store.Permanent(im.err) {
				a.res.Skipped = append(a.res.Skipped, Skip{im.item.ID, im.item.Key, im.err.Error()})
				continue
			}
			if im.err != nil {
				return fmt.Errorf("dataset: pack: read %q: %w", im.item.Key, im.err)
			}
			ext, ok := packFormats[http.DetectContentType(im.data)]
			if !ok {
				a.res.Skipped = append(a.res.Skipped, Skip{im.item.ID, im.item.Key, "not a JPEG, PNG, GIF, BMP or WebP image"})
				continue
			}
			if err := a.add(ext, im.data, im.item); err != nil {
				return err
			}
			if a.n == perArchive {
				if err := a.finish(opt.Archived); err != nil {
					return err
				}
			}
		}
	})
	if err := g.Wait(); err != nil {
		return a.res, err
	}
	if a.res.Images == 0 {
		return a.res, fmt.Errorf("dataset: pack: no image of the dataset could be packed (%d skipped)", len(a.res.Skipped))
	}
	return a.res, a.writeSkips(ctx, "skipped.csv", a.res.Skipped)
}

// packState is out/pack.json: what is being packed there.
type packState struct {
	Dataset    schemas.Dataset `json:"dataset"`
	PerArchive int             `json:"per_archive"`
}

// archiveWriter writes a pack's archives one after another: it streams the
// current one to the bucket, then commits its sources list beside it, the
// mark that the archive is whole.
type archiveWriter struct {
	ctx       context.Context
	bucket    *blob.Bucket
	prefix    string
	bucketURL string
	res       Packed

	index     int // of the current archive
	n         int // images in it
	skipsFrom int // the first of res.Skipped since the last archive
	cancel    context.CancelFunc
	bw        *blob.Writer
	size      int64 // bytes written to bw
	buf       *bufio.Writer
	tw        *webdataset.Writer
	sources   bytes.Buffer
}

func (a *archiveWriter) key(i int, suffix string) string {
	return fmt.Sprintf("%s%06d%s", a.prefix, i, suffix)
}

// resume starts a pack of ds into an empty prefix, or takes up an
// interrupted one: it restores what the whole archives hold and returns
// how many dataset images they cover, and the key of the last of those.
func (a *archiveWriter) resume(ctx context.Context, ds schemas.Dataset, perArchive int) (from int64, last string, err error) {
	state, _ := json.Marshal(packState{ds, perArchive})
	sizes := map[string]int64{}
	it := a.bucket.List(&blob.ListOptions{Prefix: a.prefix})
	for {
		obj, err := it.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, "", err
		}
		sizes[obj.Key] = obj.Size
	}
	if len(sizes) == 0 {
		return 0, "", store.WriteAll(ctx, a.bucket, a.prefix+"pack.json", state)
	}
	old, err := store.ReadAll(ctx, a.bucket, a.prefix+"pack.json")
	if err != nil {
		return 0, "", errors.New("it holds objects but no pack.json of an interrupted pack; pack into an empty prefix")
	}
	if !bytes.Equal(old, state) {
		return 0, "", fmt.Errorf("it holds a pack of %s, not of this dataset and -per-archive (%s); pack into an empty prefix", old, state)
	}
	for i := 0; ; i++ {
		if _, whole := sizes[a.key(i, ".sources.csv")]; !whole {
			break
		}
		name, err := itemKey(a.bucketURL, a.key(i, ".tar"))
		if err != nil {
			return 0, "", err
		}
		a.res.Archives = append(a.res.Archives, name)
		a.res.Bytes += sizes[a.key(i, ".tar")]
	}
	if a.index = len(a.res.Archives); a.index == 0 {
		return 0, "", nil
	}
	a.res.Resumed = a.index
	// The last sample of the last whole archive says where the pack was.
	rows, err := readRows(ctx, a.bucket, a.key(a.index-1, ".sources.csv"))
	if err != nil {
		return 0, "", err
	}
	if len(rows) < 2 {
		return 0, "", fmt.Errorf("%s: no samples listed", a.key(a.index-1, ".sources.csv"))
	}
	lastRow := rows[len(rows)-1]
	sample, err1 := strconv.Atoi(lastRow[0])
	item, err2 := strconv.ParseInt(lastRow[1], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, "", fmt.Errorf("%s: want rows of sample,item,uri after its header, got %q", a.key(a.index-1, ".sources.csv"), lastRow)
	}
	a.res.Images = sample + 1
	for i := range a.index {
		key := a.key(i, ".skipped.csv")
		if _, ok := sizes[key]; !ok {
			continue
		}
		rows, err := readRows(ctx, a.bucket, key)
		if err != nil {
			return 0, "", err
		}
		for _, r := range rows[min(1, len(rows)):] {
			pos, err := strconv.ParseInt(r[0], 10, 64)
			if err != nil {
				return 0, "", fmt.Errorf("%s: item %q is not a number", key, r[0])
			}
			a.res.Skipped = append(a.res.Skipped, Skip{pos, r[1], r[2]})
		}
	}
	a.skipsFrom = len(a.res.Skipped)
	return item + 1, lastRow[2], nil
}

// readRows reads a CSV object of three columns.
func readRows(ctx context.Context, b *blob.Bucket, key string) ([][]string, error) {
	data, err := b.ReadAll(ctx, key)
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = 3
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key, err)
	}
	return rows, nil
}

// add writes an image of the dataset into the current archive as the
// pack's next sample, starting an archive when none is open.
func (a *archiveWriter) add(ext string, data []byte, it Item) error {
	if a.bw == nil {
		key := a.key(a.index, ".tar")
		ctx, cancel := context.WithCancel(a.ctx)
		bw, err := a.bucket.NewWriter(ctx, key, &blob.WriterOptions{ContentType: "application/x-tar"})
		if err != nil {
			cancel()
			return fmt.Errorf("dataset: pack: %s: %w", key, err)
		}
		a.cancel, a.bw, a.size = cancel, bw, 0
		a.buf = bufio.NewWriterSize(writerFunc(func(p []byte) (int, error) {
			n, err := bw.Write(p)
			a.size += int64(n)
			return n, err
		}), 1<<20)
		a.tw = webdataset.NewWriter(a.buf)
		a.sources.Reset()
		a.sources.WriteString("sample,item,uri\n")
	}
	sample := fmt.Sprintf("%09d", a.res.Images)
	if err := a.tw.Write(sample, ext, data, strings.TrimSpace(it.Label), strings.TrimSpace(it.Domain)); err != nil {
		return fmt.Errorf("dataset: pack: image %q: %w", it.Key, err)
	}
	w := csv.NewWriter(&a.sources)
	w.Write([]string{sample, strconv.FormatInt(it.ID, 10), it.Key})
	w.Flush()
	a.n++
	a.res.Images++
	return nil
}

// finish commits the current archive, if any, then the images skipped
// since the last one (its .skipped.csv), then its sources list: a resumed
// pack takes an archive with its sources list for whole, and finds beside
// it the skips before its last image.
func (a *archiveWriter) finish(archived func(string, int, int)) error {
	if a.bw == nil {
		return nil
	}
	key := a.key(a.index, ".tar")
	err := a.tw.Close()
	if err == nil {
		err = a.buf.Flush()
	}
	if err != nil {
		a.abort()
		return fmt.Errorf("dataset: pack: %s: %w", key, err)
	}
	err = a.bw.Close()
	a.cancel()
	a.bw = nil
	if err != nil {
		return fmt.Errorf("dataset: pack: %s: %w", key, err)
	}
	if err := a.writeSkips(a.ctx, fmt.Sprintf("%06d.skipped.csv", a.index), a.res.Skipped[a.skipsFrom:]); err != nil {
		return err
	}
	a.skipsFrom = len(a.res.Skipped)
	if err := store.WriteAll(a.ctx, a.bucket, a.key(a.index, ".sources.csv"), a.sources.Bytes()); err != nil {
		return fmt.Errorf("dataset: pack: %w", err)
	}
	name, err := itemKey(a.bucketURL, key)
	if err != nil {
		return err
	}
	a.res.Archives = append(a.res.Archives, name)
	a.res.Bytes += a.size
	if archived != nil {
		archived(name, a.n, a.res.Images)
	}
	a.index++
	a.n = 0
	return nil
}

// writeSkips writes skips as CSV to name in the prefix, when there are any.
func (a *archiveWriter) writeSkips(ctx context.Context, name string, skips []Skip) error {
	if len(skips) == 0 {
		return nil
	}
	var buf bytes.Buffer
	w := csv.NewWriter(&buf)
	w.Write([]string{"item", "uri", "reason"})
	for _, sk := range skips {
		w.Write([]string{strconv.FormatInt(sk.Item, 10), sk.URI, sk.Reason})
	}
	w.Flush()
	if err := store.WriteAll(ctx, a.bucket, a.prefix+name, buf.Bytes()); err != nil {
		return fmt.Errorf("dataset: pack: %w", err)
	}
	return nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

// abort drops the archive being written, if any: a cancelled blob.Writer
// discards its data on Close.
func (a *archiveWriter) abort() {
	if a.bw != nil {
		a.cancel()
		a.bw.Close()
		a.bw = nil
	}
}
