package dataset

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"net/http"
	"strings"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
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
	Readers int
	// Archived, when set, is called after each archive is written.
	Archived func(archive string, images int)
}

// Packed is what Pack wrote.
type Packed struct {
	Archives []string // keys (or URLs) of the archives, in order
	Images   int
	Bytes    int64 // of the archives
	Skipped  []Skip
}

// Skip is a dataset image that Pack left out, and why.
type Skip struct{ URI, Reason string }

// packFormats maps the content types http.DetectContentType sniffs to the
// member extension of each image format DCD decodes.
var packFormats = map[string]string{
	"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/bmp": "bmp", "image/webp": "webp",
}

// Pack copies the images of ds, with their labels and domains, into
// WebDataset archives under out (a key prefix in s.Bucket, or a URL):
// out/000000.tar, out/000001.tar, …, each of opt.PerArchive images in the
// dataset's order, named by their position (000000123.png). Beside each
// archive, out/000000.sources.csv maps its samples back to their images.
// A pool packed this way is read with one range read per MiB of an
// archive instead of one read per image.
//
// An image that cannot be read (gone, forbidden) or is not in a format DCD
// decodes (JPEG, PNG, GIF, BMP, WebP, sniffed from its bytes) is left out
// and listed in out/skipped.csv and in Packed.Skipped; any other read error
// stops the pack, naming the image. out must hold no objects yet, so that
// no archive of an earlier pack is read as part of this one.
func (s Source) Pack(ctx context.Context, ds schemas.Dataset, out string, opt PackOptions) (Packed, error) {
	var res Packed
	if ds.WebDataset != "" {
		return res, fmt.Errorf("dataset: pack: %q is packed already (a webdataset)", ds.WebDataset)
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
		return res, fmt.Errorf("dataset: pack into %q: %w", out, err)
	}
	if prefix = strings.TrimSuffix(prefix, "/"); prefix != "" {
		prefix += "/"
	}
	switch obj, err := ob.List(&blob.ListOptions{Prefix: prefix}).Next(ctx); err {
	case nil:
		return res, fmt.Errorf("dataset: pack into %q: it holds %q already; pack into an empty prefix", out, obj.Key)
	case io.EOF:
	default:
		return res, fmt.Errorf("dataset: pack into %q: %w", out, err)
	}

	// Images are read by readers goroutines and written in dataset order:
	// the walk queues each item twice, in order for the writer and as work
	// for a reader, and the queue's length bounds the reads in flight.
	type image struct {
		item Item
		data []byte
		err  error
		done chan struct{}
	}
	g, gctx := errgroup.WithContext(ctx)
	order, work := make(chan *image, 2*readers), make(chan *image)
	g.Go(func() error {
		err := s.Walk(gctx, ds, func(it Item) error {
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

	a := archiveWriter{ctx: gctx, bucket: ob, prefix: prefix, bucketURL: obURL}
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
				return a.finish(&res, opt.Archived)
			}
			<-im.done
			if im.err != nil {
				switch gcerrors.Code(im.err) {
				case gcerrors.NotFound, gcerrors.PermissionDenied, gcerrors.InvalidArgument:
					res.Skipped = append(res.Skipped, Skip{im.item.Key, im.err.Error()})
					continue
				}
				return fmt.Errorf("dataset: pack: read %q: %w", im.item.Key, im.err)
			}
			ext, ok := packFormats[http.DetectContentType(im.data)]
			if !ok {
				res.Skipped = append(res.Skipped, Skip{im.item.Key, "not a JPEG, PNG, GIF, BMP or WebP image"})
				continue
			}
			if err := a.add(res.Images, ext, im.data, im.item); err != nil {
				return err
			}
			res.Images++
			if a.n == perArchive {
				if err := a.finish(&res, opt.Archived); err != nil {
					return err
				}
			}
		}
	})
	if err := g.Wait(); err != nil {
		return res, err
	}
	if res.Images == 0 {
		return res, fmt.Errorf("dataset: pack: no image of the dataset could be packed (%d skipped)", len(res.Skipped))
	}
	if len(res.Skipped) > 0 {
		var buf bytes.Buffer
		w := csv.NewWriter(&buf)
		w.Write([]string{"uri", "reason"})
		for _, sk := range res.Skipped {
			w.Write([]string{sk.URI, sk.Reason})
		}
		w.Flush()
		if err := store.WriteAll(ctx, ob, prefix+"skipped.csv", buf.Bytes()); err != nil {
			return res, fmt.Errorf("dataset: pack: %w", err)
		}
	}
	return res, nil
}

// archiveWriter streams the current archive to the bucket, and its
// sources list beside it.
type archiveWriter struct {
	ctx       context.Context
	bucket    *blob.Bucket
	prefix    string
	bucketURL string

	index   int // of the current archive
	n       int // images in it
	cancel  context.CancelFunc
	bw      *blob.Writer
	size    int64 // bytes written to bw
	buf     *bufio.Writer
	tw      *webdataset.Writer
	sources bytes.Buffer
}

func (a *archiveWriter) key() string { return fmt.Sprintf("%s%06d.tar", a.prefix, a.index) }

// add writes image number i of the pack into the current archive, starting
// one when none is open.
func (a *archiveWriter) add(i int, ext string, data []byte, it Item) error {
	if a.bw == nil {
		ctx, cancel := context.WithCancel(a.ctx)
		bw, err := a.bucket.NewWriter(ctx, a.key(), &blob.WriterOptions{ContentType: "application/x-tar"})
		if err != nil {
			cancel()
			return fmt.Errorf("dataset: pack: %s: %w", a.key(), err)
		}
		a.cancel, a.bw, a.size = cancel, bw, 0
		a.buf = bufio.NewWriterSize(writerFunc(func(p []byte) (int, error) {
			n, err := bw.Write(p)
			a.size += int64(n)
			return n, err
		}), 1<<20)
		a.tw = webdataset.NewWriter(a.buf)
		a.sources.Reset()
		a.sources.WriteString("sample,uri\n")
	}
	sample := fmt.Sprintf("%09d", i)
	if err := a.tw.Write(sample, ext, data, strings.TrimSpace(it.Label), strings.TrimSpace(it.Domain)); err != nil {
		return fmt.Errorf("dataset: pack: image %q: %w", it.Key, err)
	}
	w := csv.NewWriter(&a.sources)
	w.Write([]string{sample, it.Key})
	w.Flush()
	a.n++
	return nil
}

// finish commits the current archive, if any, then its sources list.
func (a *archiveWriter) finish(res *Packed, archived func(string, int)) error {
	if a.bw == nil {
		return nil
	}
	key := a.key()
	err := a.tw.Close()
	if err == nil {
		err = a.buf.Flush()
	}
	if err != nil {
		a.abort()
		return fmt.Errorf("dataset: pack: %s: %w", key, err)
	}
	if err := a.bw.Close(); err != nil {
		a.cancel()
		a.bw = nil
		return fmt.Errorf("dataset: pack: %s: %w", key, err)
	}
	a.cancel()
	a.bw = nil
	sources := strings.TrimSuffix(key, ".tar") + ".sources.csv"
	if err := store.WriteAll(a.ctx, a.bucket, sources, a.sources.Bytes()); err != nil {
		return fmt.Errorf("dataset: pack: %w", err)
	}
	name, err := itemKey(a.bucketURL, key)
	if err != nil {
		return err
	}
	res.Archives = append(res.Archives, name)
	res.Bytes += a.size
	if archived != nil {
		archived(name, a.n)
	}
	a.index++
	a.n = 0
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
