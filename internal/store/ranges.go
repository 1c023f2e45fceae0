package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"gocloud.dev/blob"
)

// An Arrow file larger than rangeBytes is read as ranges of that size,
// rangesAtOnce at a time. An object store streams one read at about one
// connection's bandwidth, often under 100 MB/s: a pass on cached features
// reads a feature file per shard (3 MiB for 2,000 rows of 384 floats), and
// one read each would set its pace on S3 more than the search does. They
// are variables so that tests can make them small.
var (
	rangeBytes   int64 = 1 << 20
	rangesAtOnce       = 8
)

// errChanged is returned when an object is replaced while its ranges are
// read; reading it again gets one version whole.
var errChanged = errors.New("the object changed while it was read")

// readRanged reads the object at key whole, in ranges read side by side
// when it is larger than rangeBytes. It is for objects DCD wrote itself:
// a store that transforms content on the way (decompressing a gzip
// Content-Encoding) can serve ranges of other bytes than the whole read.
func readRanged(ctx context.Context, b *blob.Bucket, key string) ([]byte, error) {
	r, err := b.NewReader(ctx, key, nil)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	size := r.Size()
	if size <= rangeBytes {
		return readWhole(r)
	}
	data, modTime := make([]byte, size), r.ModTime()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	n := int((size + rangeBytes - 1) / rangeBytes)
	errs := make([]error, n)
	at := make(chan struct{}, rangesAtOnce)
	var wg sync.WaitGroup
	for k := 1; k < n; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			at <- struct{}{}
			defer func() { <-at }()
			off := int64(k) * rangeBytes
			if errs[k] = readRange(ctx, b, key, data[off:min(off+rangeBytes, size)], off, size, modTime); errs[k] != nil {
				cancel()
			}
		}()
	}
	// The first range comes from the reader that found the size.
	at <- struct{}{}
	_, errs[0] = io.ReadFull(r, data[:rangeBytes])
	<-at
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return nil, err
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return data, nil
}

// readRange fills dst with the bytes of key from off, checking that the
// object is still the one of the given size and modification time.
func readRange(ctx context.Context, b *blob.Bucket, key string, dst []byte, off, size int64, modTime time.Time) error {
	r, err := b.NewRangeReader(ctx, key, off, int64(len(dst)), nil)
	if err != nil {
		return err
	}
	defer r.Close()
	if r.Size() != size || !r.ModTime().Equal(modTime) {
		return errChanged
	}
	if _, err := io.ReadFull(r, dst); err != nil {
		return fmt.Errorf("bytes %d-%d: %w", off, off+int64(len(dst)), err)
	}
	return nil
}

// readWhole reads r to its end into a buffer of its size, which copies
// the data once: blob.Bucket.ReadAll uses io.ReadAll, which grows its
// buffer from 512 bytes and copies a feature file of a few MiB, or a photo
// of a few hundred KiB, several times over (in a pass on cached features,
// more CPU than the read itself).
func readWhole(r *blob.Reader) ([]byte, error) {
	// io.ReadAll's loop over a buffer with room for the object and the
	// read that finds its end. A reader whose content outgrows its Size
	// (a store that decompresses on the way) still reads to the end.
	data := make([]byte, 0, max(r.Size(), 0)+1)
	for {
		n, err := r.Read(data[len(data):cap(data)])
		data = data[:len(data)+n]
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return nil, err
		}
		if len(data) == cap(data) {
			data = append(data, 0)[:len(data)]
		}
	}
}
