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
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"

	"gocloud.dev/blob"
	"gocloud.dev/gcerrors"
	"golang.org/x/sync/errgroup"

	"dcd/internal/redact"
	"dcd/internal/store"
	"dcd/internal/webdataset"
	"dcd/schemas"
)

// A pack copies a dataset stored one object per image into WebDataset
// archives under an output prefix (a key prefix in the bucket, or a URL),
// which a pass reads with one range read per MiB of an archive instead of
// one read per image. Its steps are independent so that many workers can
// share one pack:
//
//   - StartPack claims the prefix for the dataset (out/pack.json);
//   - the dataset is cut into runs of items in its order, and PackArchive
//     writes the n-th run into out/NNNNNN.tar, in any order, anywhere;
//   - FinishPack gathers what was left out into out/skipped.csv.

// Archive is what PackArchive wrote.
type Archive struct {
	// Key is the archive's key (or URL); empty when none of its images
	// could be packed, and no archive was written.
	Key     string
	Images  int
	Bytes   int64
	Skipped []Skip
	// Resumed says an earlier PackArchive wrote the archive whole.
	Resumed bool
}

// Skip is a dataset image that a pack left out, and why.
type Skip struct {
	Item   int64 // the image's position in the dataset
	URI    string
	Reason string
}

// ErrPackRefused wraps the errors of a pack that must not go on: the
// prefix holds something else, or the dataset changed under it. Trying
// again cannot help.
var ErrPackRefused = errors.New("pack refused")

// MaxImageBytes is the largest file read as an image, by a pack and by a
// pass: a 100-megapixel photo is some 30 MB as a JPEG, 150 as a PNG. A
// manifest row that names a video or an archive would otherwise be read
// whole into memory, by each of the readers at once.
const MaxImageBytes = 256 << 20

// packFormats maps the content types http.DetectContentType sniffs to the
// member extension of each image format DCD decodes.
var packFormats = map[string]string{
	"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif", "image/bmp": "bmp", "image/webp": "webp",
}

// packState is out/pack.json: what is being packed there.
type packState struct {
	Dataset    schemas.Dataset `json:"dataset"`
	PerArchive int             `json:"per_archive"`
}

// StartPack claims out for a pack of ds in archives of perArchive images.
// out must be outside an ImageFolder's prefix (whose listing would take in
// the archives), and empty, or hold a pack of the same dataset and
// perArchive (its pack.json says which), finished or interrupted: the pack
// then goes on, and PackArchive keeps the archives already whole.
func (s Source) StartPack(ctx context.Context, ds schemas.Dataset, out string, perArchive int) error {
	if ds.WebDataset != "" {
		return fmt.Errorf("dataset: pack: %w: %q is packed already (a webdataset)", ErrPackRefused, ds.WebDataset)
	}
	if ds.Prefix != "" && within(out, ds.Prefix, s.URL) {
		return fmt.Errorf("dataset: pack: %w: the output %q is inside the dataset's prefix %q", ErrPackRefused, out, ds.Prefix)
	}
	defer s.ownBuckets()()
	b, prefix, _, err := s.packPrefix(ctx, out)
	if err != nil {
		return err
	}
	state, _ := json.Marshal(packState{ds, perArchive})
	// Another pack may claim out between these reads and the write: the
	// claim is written only if none is there, and seen, read again.
	for range 3 {
		old, err := store.ReadAll(ctx, b, prefix+"pack.json")
		switch {
		case err == nil && bytes.Equal(old, state):
			return nil
		case err == nil:
			return fmt.Errorf("dataset: pack into %q: %w: it holds a pack of %s, not of this dataset and -per-archive (%s); pack into an empty prefix", out, ErrPackRefused, old, state)
		case gcerrors.Code(err) != gcerrors.NotFound:
			return fmt.Errorf("dataset: pack into %q: %w", out, err)
		}
		page, _, err := b.ListPage(ctx, blob.FirstPageToken, 2, &blob.ListOptions{Prefix: prefix})
		if err != nil {
			return fmt.Errorf("dataset: pack into %q: %w", out, err)
		}
		if slices.ContainsFunc(page, func(o *blob.ListObject) bool { return o.Key != prefix+"pack.json" }) {
			return fmt.Errorf("dataset: pack into %q: %w: it holds objects but no pack.json of a pack; pack into an empty prefix", out, ErrPackRefused)
		}
		if len(page) > 0 {
			continue // claimed since the read
		}
		testHookClaim()
		err = b.WriteAll(ctx, prefix+"pack.json", state, &blob.WriterOptions{IfNotExist: true})
		if gcerrors.Code(err) != gcerrors.FailedPrecondition {
			if err != nil {
				return fmt.Errorf("dataset: pack into %q: %w", out, err)
			}
			return nil
		}
	}
	return fmt.Errorf("dataset: pack into %q: its pack.json was claimed and given back while this pack started; start it again", out)
}

// testHookClaim runs before StartPack writes its claim.
var testHookClaim = func() {}

// AbandonPack gives out back when a pack failed before writing anything
// but its claim: it removes out/pack.json if nothing else is there, so that
// a pack of another dataset (a mistyped manifest, corrected) may use out.
func (s Source) AbandonPack(ctx context.Context, out string) error {
	defer s.ownBuckets()()
	b, prefix, _, err := s.packPrefix(ctx, out)
	if err != nil {
		return err
	}
	page, _, err := b.ListPage(ctx, blob.FirstPageToken, 2, &blob.ListOptions{Prefix: prefix})
	if err != nil {
		return fmt.Errorf("dataset: pack into %q: %w", out, err)
	}
	if len(page) != 1 || page[0].Key != prefix+"pack.json" {
		return nil
	}
	return b.Delete(ctx, prefix+"pack.json")
}

// within says whether the prefix p is dir or below it: keys of the
// workers' bucket, whose URL is self (empty when unknown), or URLs of one
// bucket (its options in any order, its prefix= read into its keys). A
// key is compared with a URL as the URL it has in the workers' bucket. Every file:// URL is of one
// filesystem, whatever its options.
func within(p, dir, self string) bool {
	split := func(ref string) (bucket, key string, ok bool) {
		if !store.IsURL(ref) {
			if self == "" {
				return "", strings.Trim(ref, "/"), true
			}
			u, err := url.Parse(self)
			if err != nil {
				return "", "", false
			}
			// The workers' bucket's prefix= is part of its keys'
			// names in the store, after its path (file://'s folder).
			q := u.Query()
			u.Path = strings.TrimSuffix(u.Path, "/") + "/" + q.Get("prefix") + strings.TrimPrefix(ref, "/")
			u.RawPath = ""
			q.Del("prefix")
			u.RawQuery = q.Encode()
			ref = u.String()
		}
		bucket, key, err := store.SplitURL(ref)
		u, perr := url.Parse(bucket)
		if err != nil || perr != nil {
			return "", "", false
		}
		// So is a URL's, of its bucket (file:///, for file:// URLs).
		q := u.Query()
		key = q.Get("prefix") + key
		q.Del("prefix")
		u.RawQuery = q.Encode()
		if u.Scheme == "file" {
			u.RawQuery = ""
		}
		return u.String(), strings.Trim(key, "/"), true
	}
	pb, pk, ok1 := split(p)
	db, dk, ok2 := split(dir)
	if !ok1 || !ok2 || pb != db {
		return false
	}
	return dk == "" || pk == dk || strings.HasPrefix(pk, dk+"/")
}

// packPrefix opens out's bucket and returns its prefix, ending in "/"
// unless it is the bucket's root, and the bucket's URL when out is one.
func (s Source) packPrefix(ctx context.Context, out string) (b *blob.Bucket, prefix, bucketURL string, err error) {
	b, prefix, bucketURL, err = s.locate(ctx, out)
	if err != nil {
		return nil, "", "", fmt.Errorf("dataset: pack into %q: %w", out, err)
	}
	if prefix = strings.TrimSuffix(prefix, "/"); prefix != "" {
		prefix += "/"
	}
	return b, prefix, bucketURL, nil
}

// archiveKey is the key of archive n's object with the given suffix.
func archiveKey(prefix string, n int, suffix string) string {
	return fmt.Sprintf("%s%06d%s", prefix, n, suffix)
}

// PackArchive writes archive n of a pack into out (claimed by StartPack):
// the images of items, a run of the dataset in its order, go into
// out/NNNNNN.tar with their labels and domains, each named by its position
// in the dataset (000000123.png). Beside it, out/NNNNNN.sources.csv maps
// the samples back to the images; it is written last, the mark that the
// archive is whole.
//
// An image that cannot be read (gone, forbidden) or is not in a format DCD
// decodes (JPEG, PNG, GIF, BMP, WebP, sniffed from its bytes) is left out,
// and listed with the reason in out/NNNNNN.skipped.csv; any other read
// error fails the call, naming the image, and a call again writes the
// archive anew. An archive found whole is kept, once it is checked to hold
// these items. readers images are read at once (a remote store answers
// each read after its latency), and about as many held in memory;
// progress, when set, is called with the images done so far.
func (s Source) PackArchive(ctx context.Context, out string, n int, items []Item, readers int, progress func(int)) (Archive, error) {
	defer s.ownBuckets()()
	if len(items) == 0 {
		return Archive{}, fmt.Errorf("dataset: pack: archive %d of %q has no images", n, out)
	}
	b, prefix, bucketURL, err := s.packPrefix(ctx, out)
	if err != nil {
		return Archive{}, err
	}
	a := &archiveWriter{bucket: b, prefix: prefix, n: n, items: items}
	if a.name, err = itemKey(bucketURL, archiveKey(prefix, n, ".tar")); err != nil {
		return Archive{}, err
	}
	if ok, err := b.Exists(ctx, archiveKey(prefix, n, ".sources.csv")); err != nil {
		return Archive{}, fmt.Errorf("dataset: pack: %w", err)
	} else if ok {
		return a.resume(ctx)
	}
	return a.write(ctx, s, max(readers, 1), progress)
}

// archiveWriter writes one archive of a pack.
type archiveWriter struct {
	bucket *blob.Bucket
	prefix string
	n      int
	items  []Item
	name   string // the archive's key or URL, for Archive.Key
	res    Archive
}

func (a *archiveWriter) key(suffix string) string { return archiveKey(a.prefix, a.n, suffix) }

// write reads the items' images, readers at a time, and writes them in
// order into the archive, then its skip list, then its sources list.
func (a *archiveWriter) write(ctx context.Context, s Source, readers int, progress func(int)) (Archive, error) {
	type image struct {
		data     []byte
		err      error
		reserved int64 // of held, given back once written
		done     chan struct{}
	}
	images := make([]image, len(a.items))
	for i := range images {
		images[i].done = make(chan struct{})
	}
	// The dispatcher takes a token per image it hands to the readers and
	// the writer gives it back once the image is written: about readers
	// images are held, read or being read; and their bytes, heldBytes
	// at most (a folder of videos, up to MaxImageBytes each).
	g, gctx := errgroup.WithContext(ctx)
	held := newHeld(heldBytes)
	tokens, next := make(chan struct{}, readers), make(chan int)
	g.Go(func() error {
		defer close(next)
		for i := range images {
			select {
			case tokens <- struct{}{}:
			case <-gctx.Done():
				return gctx.Err()
			}
			select {
			case next <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	for range min(readers, len(images)) {
		g.Go(func() error {
			for i := range next {
				rctx := store.WithReserve(gctx, func(ctx context.Context, n int64) error {
					if err := held.reserve(ctx, i, n); err != nil {
						return err
					}
					images[i].reserved += n
					return nil
				})
				images[i].data, images[i].err = s.Buckets.ReadAtMost(rctx, s.Bucket, a.items[i].Key, MaxImageBytes)
				close(images[i].done)
			}
			return nil
		})
	}
	g.Go(func() error {
		done := 0 // images written or skipped
		tar := newTarStream(gctx, a.bucket, a.key(".tar"), func() {
			if progress != nil {
				progress(done) // a MiB uploaded: a large image's write goes on
			}
		})
		defer tar.abort()
		sources := newCSV(sourcesHeader...)
		unread := 0
		for i, it := range a.items {
			held.writing(i)
			select {
			case <-images[i].done:
			case <-gctx.Done():
				return gctx.Err()
			}
			data, err := images[i].data, images[i].err
			images[i].data = nil
			<-tokens
			ext, ok := packFormats[http.DetectContentType(data)]
			label, domain := strings.TrimSpace(it.Label), strings.TrimSpace(it.Domain)
			switch {
			case store.CredentialsRefused(err):
				// Not the image's fault: skipped, it would stay skipped
				// in an archive marked whole once they were fixed.
				return fmt.Errorf("dataset: pack: read %q: the worker's credentials were refused or not found (fix them and pack again; no image is skipped for it): %w", it.Key, err)
			case errors.Is(err, store.ErrTooLarge):
				a.res.Skipped = append(a.res.Skipped, Skip{it.ID, it.Key, fmt.Sprintf("over %d MiB: not read as an image", MaxImageBytes>>20)})
			case store.Permanent(err):
				a.res.Skipped = append(a.res.Skipped, Skip{it.ID, it.Key, err.Error()})
				unread++
			case err != nil:
				return fmt.Errorf("dataset: pack: read %q: %w", it.Key, err)
			case !ok:
				a.res.Skipped = append(a.res.Skipped, Skip{it.ID, it.Key, "not a JPEG, PNG, GIF, BMP or WebP image"})
			case label == "": // a pass would skip it too: no label is a class
				a.res.Skipped = append(a.res.Skipped, Skip{it.ID, it.Key, "no label"})
			case len(label) > webdataset.MaxText || len(domain) > webdataset.MaxText:
				a.res.Skipped = append(a.res.Skipped, Skip{it.ID, it.Key, fmt.Sprintf("label or domain over %d bytes", webdataset.MaxText)})
			default:
				sample := fmt.Sprintf("%09d", it.ID)
				if err := tar.write(sample, ext, data, label, domain); err != nil {
					return fmt.Errorf("dataset: pack: image %q into %s: %w", it.Key, a.key(".tar"), err)
				}
				sources.row(sample, strconv.FormatInt(it.ID, 10), it.Key, label, domain, it.Version)
				a.res.Images++
			}
			held.release(images[i].reserved) // written (tar.write copies it) or skipped
			if done = i + 1; progress != nil {
				progress(done)
			}
		}
		if a.res.Images > 0 {
			size, err := tar.close()
			if err != nil {
				return fmt.Errorf("dataset: pack: %s: %w", a.key(".tar"), err)
			}
			a.res.Key, a.res.Bytes = a.name, size
		} else if err := a.bucket.Delete(gctx, a.key(".tar")); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			// An attempt that packed these images before they were gone
			// left it: a pass would read it, with no sources to say so.
			return fmt.Errorf("dataset: pack: %w", err)
		}
		if unread > 1 && unread == len(a.items) {
			// The workers' access (a bucket's name, its policy) is
			// wrong, not the images: marked whole, the archive would
			// stay empty once that is fixed. (An archive of one image,
			// -per-archive 1, says too little to fail the pack for.)
			return fmt.Errorf("%w: none of the %d images of %s could be read (the first, %s: %s): check that the workers can read them",
				ErrPackRefused, unread, a.key(".tar"), redact.URL(a.res.Skipped[0].URI), redact.Text(a.res.Skipped[0].Reason))
		}
		if err := writeSkips(gctx, a.bucket, a.key(".skipped.csv"), a.res.Skipped, a.items); err != nil {
			return err
		}
		if err := store.WriteAll(gctx, a.bucket, a.key(".sources.csv"), sources.bytes()); err != nil {
			return fmt.Errorf("dataset: pack: %w", err)
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return Archive{}, err
	}
	return a.res, nil
}

// heldBytes bounds the bytes of the images an archive's readers hold,
// read and not yet written.
var heldBytes int64 = 1 << 30 // a variable for the tests

// held is a budget of bytes that images in an archive's order take and
// give back. The image the writer waits for (next) takes its bytes past
// the budget if it must: the images after it hold them until it is
// written, in order, and would otherwise wait for it for ever.
type held struct {
	mu      sync.Mutex
	budget  int64
	used    int64
	next    int
	changed chan struct{} // closed, and replaced, when used or next change
}

func newHeld(budget int64) *held { return &held{budget: budget, changed: make(chan struct{})} }

// reserve takes n bytes for image i, waiting until they are free or i is
// the next image written.
func (h *held) reserve(ctx context.Context, i int, n int64) error {
	for {
		h.mu.Lock()
		if h.used+n <= h.budget || i <= h.next {
			h.used += n
			h.mu.Unlock()
			return nil
		}
		changed := h.changed
		h.mu.Unlock()
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (h *held) release(n int64) { h.update(func() { h.used -= n }) }

// writing says that image i is the next one written.
func (h *held) writing(i int) { h.update(func() { h.next = i }) }

func (h *held) update(fn func()) {
	h.mu.Lock()
	defer h.mu.Unlock()
	fn()
	close(h.changed)
	h.changed = make(chan struct{})
}

// resume takes up an archive written whole before, checking that its
// samples and skips are the items, so that a pack whose dataset changed
// under it is not finished with archives of the old one.
func (a *archiveWriter) resume(ctx context.Context) (Archive, error) {
	a.res.Resumed = true
	// An archive of an earlier DCD lists no labels to compare (3 columns).
	sources, err := readRows(ctx, a.bucket, a.key(".sources.csv"), 3, sourcesHeader...)
	if err != nil {
		return Archive{}, err
	}
	if len(sources) > 0 && len(sources[0]) != 3 && len(sources[0]) != len(sourcesHeader) {
		// No DCD wrote one: its rows would be read past their end.
		return Archive{}, fmt.Errorf("dataset: pack: %w: %s has %d columns; DCD writes %d (or 3, before labels were kept): pack into an empty prefix",
			ErrPackRefused, a.key(".sources.csv"), len(sources[0]), len(sourcesHeader))
	}
	skips, err := readRows(ctx, a.bucket, a.key(".skipped.csv"), len(packSkipsHeader), skipHeader...)
	if err != nil && gcerrors.Code(err) != gcerrors.NotFound {
		return Archive{}, err
	}
	if len(skips) > 0 && len(skips[0]) != len(packSkipsHeader) && len(skips[0]) != len(skipHeader) {
		// No DCD wrote one: its rows would be read past their end.
		return Archive{}, fmt.Errorf("dataset: pack: %w: %s has %d columns; DCD writes %d (or %d, before labels were kept): pack into an empty prefix",
			ErrPackRefused, a.key(".skipped.csv"), len(skips[0]), len(skipHeader), len(packSkipsHeader))
	}
	for _, r := range skips {
		a.res.Skipped = append(a.res.Skipped, Skip{URI: r[1], Reason: r[2]})
		a.res.Skipped[len(a.res.Skipped)-1].Item, _ = strconv.ParseInt(r[0], 10, 64)
	}
	// Both lists are in the dataset's order; together they must be the items.
	i, j := 0, 0
	for _, it := range a.items {
		id := strconv.FormatInt(it.ID, 10)
		switch {
		case i < len(sources) && sources[i][1] == id && sources[i][2] == it.Key && samePacked(sources[i][3:], it):
			i++
		case j < len(skips) && skips[j][0] == id && skips[j][1] == it.Key && samePacked(skips[j][3:], it):
			j++
		default:
			return Archive{}, fmt.Errorf("dataset: pack: %w: %s was packed from other images than the dataset's %d to %d (the dataset changed since: image %d is %q); pack into an empty prefix",
				ErrPackRefused, a.key(".tar"), a.items[0].ID, a.items[len(a.items)-1].ID, it.ID, it.Key)
		}
	}
	if i != len(sources) || j != len(skips) {
		return Archive{}, fmt.Errorf("dataset: pack: %w: %s lists more images than the dataset's %d to %d; pack into an empty prefix",
			ErrPackRefused, a.key(".tar"), a.items[0].ID, a.items[len(a.items)-1].ID)
	}
	if a.res.Images = len(sources); a.res.Images > 0 {
		attrs, err := a.bucket.Attributes(ctx, a.key(".tar"))
		if err != nil {
			return Archive{}, fmt.Errorf("dataset: pack: %s is listed whole by its sources: %w", a.key(".tar"), err)
		}
		a.res.Key, a.res.Bytes = a.name, attrs.Size
	}
	return a.res, nil
}

// FinishPack gathers the skip lists of a pack's archives 0 to archives-1
// into out/skipped.csv, in the dataset's order, and returns how many images
// were skipped. There is no skipped.csv when none was. The lists are
// streamed, whatever their length; progress, when set, is called for each
// object listed and each list copied.
func (s Source) FinishPack(ctx context.Context, out string, archives int, progress func()) (int, error) {
	defer s.ownBuckets()()
	b, prefix, _, err := s.packPrefix(ctx, out)
	if err != nil {
		return 0, err
	}
	// One listing finds the archives that have a skip list: most have
	// none, and asking for each would cost a pack of 10^5 archives as many
	// reads of a remote store.
	// It also finds archives past the last: a pack of this dataset when it
	// was longer left them, and a pass would read them.
	var lists []int
	if err := store.List(ctx, b, &blob.ListOptions{Prefix: prefix, Delimiter: "/"}, func(obj *blob.ListObject) error {
		if progress != nil {
			progress()
		}
		name := strings.TrimPrefix(obj.Key, prefix)
		num, suffix, _ := strings.Cut(name, ".")
		n, err := strconv.Atoi(num)
		switch {
		case err != nil:
		case n >= archives && (suffix == "tar" || suffix == "sources.csv"):
			return fmt.Errorf("dataset: pack: %w: %s is past the pack's %d archives (the dataset has fewer images than when it was packed there); pack into an empty prefix", ErrPackRefused, archiveKey(prefix, n, ".tar"), archives)
		case suffix == "skipped.csv" && n < archives:
			lists = append(lists, n)
		}
		return nil
	}); err != nil {
		if errors.Is(err, ErrPackRefused) {
			return 0, err
		}
		return 0, fmt.Errorf("dataset: pack: list %q: %w", out, err)
	}
	slices.Sort(lists) // numbers past 999999 have more digits: keys do not sort as numbers
	if len(lists) == 0 {
		return 0, writeSkips(ctx, b, prefix+"skipped.csv", nil, nil)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := b.NewWriter(wctx, prefix+"skipped.csv", store.WriterOptions(b, "text/csv"))
	if err != nil {
		return 0, fmt.Errorf("dataset: pack: %w", err)
	}
	skipped, err := copySkips(ctx, b, prefix, lists, w, progress)
	if err != nil {
		cancel() // the writer then drops what it was given
	}
	if cerr := w.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("dataset: pack: skipped.csv: %w", cerr)
	}
	return skipped, err
}

// copySkips writes the skip lists of the archives numbered lists, in
// order, to w as one CSV with packSkipsHeader, and counts their rows.
func copySkips(ctx context.Context, b *blob.Bucket, prefix string, lists []int, w io.Writer, progress func()) (int, error) {
	if _, err := w.Write(newCSV(packSkipsHeader...).bytes()); err != nil {
		return 0, fmt.Errorf("dataset: pack: skipped.csv: %w", err)
	}
	skipped := 0
	for _, n := range lists {
		rows, err := readRows(ctx, b, archiveKey(prefix, n, ".skipped.csv"), len(packSkipsHeader), skipHeader...)
		if err != nil {
			return 0, err
		}
		body := newCSV()
		for _, r := range rows {
			body.row(r[:len(packSkipsHeader)]...)
		}
		if _, err := w.Write(body.bytes()); err != nil {
			return 0, fmt.Errorf("dataset: pack: skipped.csv: %w", err)
		}
		skipped += len(rows)
		if progress != nil {
			progress()
		}
	}
	return skipped, nil
}

// readRows reads a CSV object written by csvRows, with the given header
// or, written by an earlier DCD, its first least columns, and returns the
// rows after it, each as wide as the header it has.
func readRows(ctx context.Context, b *blob.Bucket, key string, least int, header ...string) ([][]string, error) {
	data, err := b.ReadAll(ctx, key)
	if err != nil {
		return nil, err
	}
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = 0 // the header's width, for every row
	rows, err := r.ReadAll()
	if err != nil {
		return nil, fmt.Errorf("dataset: pack: %s: %w", key, err)
	}
	if len(rows) == 0 || len(rows[0]) < least || len(rows[0]) > len(header) || !slices.Equal(rows[0], header[:len(rows[0])]) {
		return nil, fmt.Errorf("dataset: pack: %s: want the header %q", key, strings.Join(header, ","))
	}
	return rows[1:], nil
}

// sourcesHeader heads an archive's sources list: each sample's image, and
// the label, domain and version it was packed with, so that a pack run
// again over a dataset relabelled (or an image rewritten) since does not
// keep the archives as they were.
var sourcesHeader = []string{"sample", "item", "uri", "label", "domain", "version"}

// samePacked reports whether a sources or skip list row's label, domain and version
// (none in an earlier DCD's list) are it's.
func samePacked(packed []string, it Item) bool {
	return len(packed) == 0 || packed[0] == strings.TrimSpace(it.Label) && packed[1] == strings.TrimSpace(it.Domain) && packed[2] == it.Version
}

// skipHeader heads an archive's skip list: each image skipped, why, and
// the label, domain and version it was judged with, so that a pack run
// again over a dataset relabelled (an image given the label it lacked)
// or an image rewritten since does not keep it skipped. The pack's
// skipped.csv, for people, has the first three (packSkipsHeader), as an
// earlier DCD's archive lists do.
var (
	skipHeader      = []string{"item", "uri", "reason", "label", "domain", "version"}
	packSkipsHeader = skipHeader[:3]
)

// writeSkips writes skips as CSV to key, or removes key when there are
// none: an attempt that died may have left one, of images since readable.
func writeSkips(ctx context.Context, b *blob.Bucket, key string, skips []Skip, items []Item) error {
	if len(skips) == 0 {
		if err := b.Delete(ctx, key); err != nil && gcerrors.Code(err) != gcerrors.NotFound {
			return fmt.Errorf("dataset: pack: %w", err)
		}
		return nil
	}
	byID := make(map[int64]Item, len(items))
	for _, it := range items {
		byID[it.ID] = it
	}
	w := newCSV(skipHeader...)
	for _, sk := range skips {
		it := byID[sk.Item]
		w.row(strconv.FormatInt(sk.Item, 10), sk.URI, sk.Reason, strings.TrimSpace(it.Label), strings.TrimSpace(it.Domain), it.Version)
	}
	if err := store.WriteAll(ctx, b, key, w.bytes()); err != nil {
		return fmt.Errorf("dataset: pack: %w", err)
	}
	return nil
}

// csvRows builds a small CSV object in memory.
type csvRows struct {
	buf bytes.Buffer
	w   *csv.Writer
}

func newCSV(header ...string) *csvRows {
	c := &csvRows{}
	c.w = csv.NewWriter(&c.buf)
	if len(header) > 0 {
		c.row(header...)
	}
	return c
}

func (c *csvRows) row(fields ...string) { c.w.Write(fields) }

func (c *csvRows) bytes() []byte {
	c.w.Flush()
	return c.buf.Bytes()
}

// tarStream streams an archive to the bucket as it is written; the object
// appears only when close succeeds.
type tarStream struct {
	key    string
	cancel context.CancelFunc
	bw     *blob.Writer
	buf    *bufio.Writer
	tw     *webdataset.Writer
	size   int64
	err    error
}

// newTarStream starts the archive at key; flushed is called after each
// MiB written to the store.
func newTarStream(ctx context.Context, b *blob.Bucket, key string, flushed func()) *tarStream {
	ctx, cancel := context.WithCancel(ctx)
	t := &tarStream{key: key, cancel: cancel}
	t.bw, t.err = b.NewWriter(ctx, key, store.WriterOptions(b, "application/x-tar"))
	if t.err != nil {
		return t
	}
	// A MiB at a time: bufio passes a large write (an image's rest)
	// straight through, and its upload would report no progress.
	t.buf = bufio.NewWriterSize(writerFunc(func(p []byte) (int, error) {
		written := 0
		for len(p) > 0 {
			chunk := p[:min(len(p), 1<<20)]
			n, err := t.bw.Write(chunk)
			t.size += int64(n)
			written += n
			flushed()
			if err != nil {
				return written, err
			}
			p = p[n:]
		}
		return written, nil
	}), 1<<20)
	t.tw = webdataset.NewWriter(t.buf)
	return t
}

func (t *tarStream) write(sample, ext string, image []byte, label, domain string) error {
	if t.err != nil {
		return t.err
	}
	return t.tw.Write(sample, ext, image, label, domain)
}

// close commits the archive and returns its size.
func (t *tarStream) close() (int64, error) {
	if t.err != nil {
		return 0, t.err
	}
	err := t.tw.Close()
	if err == nil {
		err = t.buf.Flush()
	}
	if err != nil {
		t.abort()
		return 0, err
	}
	err = t.bw.Close()
	t.bw = nil
	t.cancel()
	return t.size, err
}

// abort drops the archive unless it was committed: a cancelled blob.Writer
// discards its data on Close.
func (t *tarStream) abort() {
	if t.bw != nil {
		t.cancel()
		t.bw.Close()
		t.bw = nil
	}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
