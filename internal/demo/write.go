package demo

import (
	"bytes"
	"context"
	"fmt"
	"image/png"
	"path"

	"gocloud.dev/blob"
	"golang.org/x/sync/errgroup"
)

// writers is how many objects are written at once: a world is tens of
// thousands of small objects, and against a remote bucket each write is
// mostly round-trip latency.
const writers = 8

// writeFiles encodes and writes fs under prefix, writers at a time; the
// first error stops the rest.
func writeFiles(ctx context.Context, b *blob.Bucket, prefix string, fs []file) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(writers)
	for _, f := range fs {
		if ctx.Err() != nil {
			break
		}
		g.Go(func() error {
			data := f.data
			if f.img != nil {
				var buf bytes.Buffer
				if err := png.Encode(&buf, f.img); err != nil {
					return fmt.Errorf("demo: encode %q: %w", prefix+f.key, err)
				}
				data = buf.Bytes()
			}
			return write(ctx, b, prefix+f.key, data)
		})
	}
	return g.Wait()
}

// contentTypes keeps buckets from sniffing types object by object.
var contentTypes = map[string]string{
	".png":  "image/png",
	".csv":  "text/csv",
	".json": "application/json",
	".onnx": "application/octet-stream",
}

func write(ctx context.Context, b *blob.Bucket, key string, data []byte) error {
	opts := &blob.WriterOptions{ContentType: contentTypes[path.Ext(key)]}
	if err := b.WriteAll(ctx, key, data, opts); err != nil {
		return fmt.Errorf("demo: write %q: %w", key, err)
	}
	return nil
}
