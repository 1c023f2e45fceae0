package webdataset

import (
	"archive/tar"
	"bufio"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// Sample is one WebDataset sample that has an image.
type Sample struct {
	Key    string // the sample key: the member name up to the first '.' of its base name
	Image  Member
	Label  string // the .cls member's content, trimmed of white space; "" when absent
	Domain string // the .domain member's content, trimmed; "" when absent
}

// imageExts are the member extensions taken for images: the formats DCD
// decodes. Other members of a sample (.json, .txt, masks such as .seg.png)
// are ignored.
var imageExts = map[string]bool{
	"jpg":  true,
	"jpeg": true,
	"jfif": true, // JPEG's own name for its files
	"png":  true,
	"gif":  true,
	"bmp":  true,
	"webp": true,
}

// otherImageExts are images in formats DCD does not decode: a walk takes
// them for a sample's image all the same, so that embedding rejects them,
// counted and named, where leaving their samples out would lose them
// unsaid.
var otherImageExts = map[string]bool{
	"tif": true, "tiff": true, "ppm": true, "pgm": true, "pbm": true, "pnm": true,
	"heic": true, "heif": true, "avif": true, "jxl": true, "jp2": true, "ico": true,
}

// nameEscaper writes a member's name for its image key.
var nameEscaper = strings.NewReplacer("%", "%25", "#", "%23")

// isImage says whether a member's extension makes it a sample's image.
func isImage(ext string) bool { return imageExts[ext] || otherImageExts[ext] }

// IsImageExt says whether ext (in lower case, without its dot) names an
// image file: in a format DCD decodes, or in one it rejects as not.
func IsImageExt(ext string) bool { return isImage(ext) }

// MaxText caps the size of a .cls or .domain member: they are read into
// memory, and anything larger is not a label but a misnamed file.
const MaxText = 64 << 10

// blockSize is the tar block size; member data starts on a block boundary.
const blockSize = 512

// WalkVersion is the version of Walk's rules for what a sample is: a
// cache of an archive's samples (dataset.IndexKey) made under other rules
// is not this archive's list now. Bumped with each change to them (2:
// hard-linked images are samples; symbolic links refused; 3: images in
// formats DCD does not decode and .jfif are samples).
const WalkVersion = 3

// Walk reads the tar stream r of archive and calls fn for every sample with
// an image, in archive order. archive only names the archive in the samples'
// members and in errors.
//
// Members are grouped into samples by sample key, and a sample's members must
// be consecutive in the archive, as WebDataset writers produce them; a key
// that reappears after other keys is an error rather than a second sample
// (a member of a sample seen long before would have to be joined to it). A member
// is an image when its extension (after the first '.' of its base name,
// compared case-insensitively) is jpg, jpeg, jfif, png, gif, bmp or webp,
// or names a format DCD does not decode (tif, heic, ...: otherImageExts),
// whose image embedding rejects; a .cls
// member holds its label, and a .domain member an optional domain. A sample
// without a .cls (or with an empty one) has no label, as a manifest row with
// an empty label: in a pool it is an image no selection can take, not a
// reason to fail a pass over millions of others. Other members, members that are not
// regular files, and names whose base starts with '.' are ignored, and
// samples without an image are skipped.
//
// Walk reads the whole stream but skips image data: it keeps each sample's
// key and each image's place (to find a reappearing key and a hard link's
// target), some 100-200 bytes a sample. It returns fn's error unchanged, and
// otherwise errors that name the archive and the sample at fault.
func Walk(r io.Reader, archive string, fn func(Sample) error) error {
	// archive/tar does not report where a member's data starts, but it reads
	// header blocks and PAX and GNU long-name records with exact reads and no
	// read-ahead, so the bytes it has consumed when Next returns are the
	// data's offset. The counter deliberately hides any io.Seeker of r: a
	// seek on a remote object's reader would open a new request per member.
	// The buffer sits below the counter, so it does not disturb the count.
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		return fmt.Errorf("%s: a gzip stream, not a tar archive: decompress it (DCD reads a member's bytes at their offset in the archive)", archive)
	}
	cr := &countingReader{r: br}
	tr := tar.NewReader(cr)
	w := walker{archive: archive, fn: fn, seen: make(map[string]string)}
	for entry := 1; ; entry++ {
		before := cr.n
		hdr, err := tr.Next()
		if err == io.EOF {
			// archive/tar takes a stream that stops at a member boundary
			// for a complete archive; demand the end-of-archive zero block,
			// so that a shard cut short at a block boundary is not read as
			// a smaller shard without a word.
			pad := (blockSize - before%blockSize) % blockSize
			if cr.n == 0 {
				return fmt.Errorf("%s: empty file, not a tar archive", archive)
			}
			if cr.n-before < pad+blockSize {
				return fmt.Errorf("%s: archive ends%s at offset %d without the end-of-archive marker; truncated?", archive, w.after(), cr.n)
			}
			return w.flush()
		}
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && hdr != nil) {
			// Names such as "../x" are only strings here, never paths to
			// write to, so ErrInsecurePath is no reason to stop.
			return fmt.Errorf("%s: reading tar%s: %w", archive, w.after(), err)
		}
		offset := cr.n
		key, err := w.member(tr, hdr, entry, offset)
		if err != nil {
			return err
		}
		// Skip the rest of the member's data here, rather than in Next, so
		// that the count before the next header is the data's end. Not a
		// sparse member's: read, its holes are zeros made 8 KiB a call
		// (2^63 bytes of them, in a crafted header), where Next skips just
		// the bytes the archive holds.
		if isSparse(hdr) {
			continue
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			if key == "" {
				return fmt.Errorf("%s: reading member %q%s: %w", archive, hdr.Name, w.after(), err)
			}
			return fmt.Errorf("%s: sample %q: reading member %q: %w", archive, key, hdr.Name, err)
		}
	}
}

// maxName is the longest member name a walk takes (Linux's PATH_MAX).
const maxName = 4096

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// walker groups members into samples.
type walker struct {
	archive string
	fn      func(Sample) error
	seen    map[string]string // sample key -> where it began, for errors
	images  map[string]Member // image members by name, for hard links to them
	cur     *pending
	last    string // the key of the last sample begun
}

// pending is the sample being read.
type pending struct {
	key   string
	image *Member
	// imageOther says image is in a format DCD does not decode
	// (otherImageExts), which one it does replaces.
	imageOther bool
	label      string
	hasLabel   bool
	domain     string
	hasDom     bool
	// symlink is an image that is a symbolic link, to symlinkTo.
	symlink, symlinkTo string
}

// after says where in the archive the walk is, for errors.
func (w *walker) after() string {
	if w.last == "" {
		return ""
	}
	return fmt.Sprintf(" after sample %q", w.last)
}

// member takes one archive member into its sample, returning the sample's
// key, or "" for a member that belongs to no sample.
func (w *walker) member(tr *tar.Reader, hdr *tar.Header, entry int, offset int64) (string, error) {
	name := hdr.Name
	sparse := isSparse(hdr)
	// A hard link (GNU tar's for a file it met before, as a pool deduped
	// with links) names a member whose bytes are its target's.
	link := hdr.Typeflag == tar.TypeLink
	symlink := hdr.Typeflag == tar.TypeSymlink
	if hdr.Typeflag != tar.TypeReg && !sparse && !link && !symlink {
		return "", nil
	}
	base := name[strings.LastIndexByte(name, '/')+1:]
	if base == "" || base[0] == '.' {
		// Dot files are not samples: macOS's AppleDouble "._x.jpg" files
		// would otherwise pass for images.
		return "", nil
	}
	key, ext := name, ""
	if dot := strings.IndexByte(base, '.'); dot >= 0 {
		key = name[:len(name)-len(base)+dot]
		ext = strings.ToLower(base[dot+1:])
	}
	switch {
	case symlink && !isImage(ext) && ext != "cls" && ext != "domain":
		return "", nil
	case len(name) > maxName:
		// PAX and GNU long names may be a MiB each: kept for every
		// sample, they would be the archive's size again in memory.
		return "", fmt.Errorf("%s: entry %d: a member name of %d bytes (%.40q...); expected at most %d",
			w.archive, entry, len(name), name, maxName)
	}

	if w.cur == nil || w.cur.key != key {
		if err := w.flush(); err != nil {
			return key, err
		}
		here := fmt.Sprintf("entry %d (%q)", entry, name)
		if first, ok := w.seen[key]; ok {
			why := "write the archive with its members sorted by name (tar --sort=name)"
			if strings.Count(base, ".") > 1 {
				why = fmt.Sprintf("%q is of sample %q, a key ending at the first '.' of a member's base name (name members <key>.<extension>, with no '.' in the key); or, if its members are out of order, %s", name, key, why)
			}
			return key, fmt.Errorf("%s: sample %q reappears at %s after other samples; it began at %s, and a sample's members must be consecutive: %s",
				w.archive, key, here, first, why)
		}
		w.seen[key] = here
		w.cur = &pending{key: key}
		w.last = key
	}
	s := w.cur

	switch {
	case symlink && isImage(ext):
		s.symlink, s.symlinkTo = name, hdr.Linkname // an error if the sample has no image of its own
	case symlink:
		return key, fmt.Errorf("%s: sample %q: %q is a symbolic link to %q; archive the file it points to (tar -h, --dereference)",
			w.archive, key, name, hdr.Linkname)
	case isImage(ext):
		if sparse {
			return key, fmt.Errorf("%s: sample %q: image %q is stored as a sparse file; expected a regular file, whose bytes are one range",
				w.archive, key, name)
		}
		other := otherImageExts[ext]
		switch {
		case s.image != nil && other && !s.imageOther:
			return key, nil // a companion DCD does not decode (a TIFF beside the JPEG): the JPEG is the image
		case s.image != nil && (other || !s.imageOther):
			return key, fmt.Errorf("%s: sample %q has two images, %q and %q; expected one",
				w.archive, key, s.image.Name, name)
		}
		// Image keys keep '#' to end the archive's name (Member.Key);
		// '%' is escaped too, so that the name reads back as it was.
		m := Member{Archive: w.archive, Name: nameEscaper.Replace(name), Offset: offset, Size: hdr.Size}
		if link {
			target, ok := w.images[path.Clean(hdr.Linkname)]
			if !ok {
				return key, fmt.Errorf("%s: sample %q: image %q is a hard link to %q, which is no image before it in the archive",
					w.archive, key, name, hdr.Linkname)
			}
			m.Offset, m.Size = target.Offset, target.Size
		}
		if w.images == nil {
			w.images = map[string]Member{}
		}
		w.images[path.Clean(name)] = m
		s.image, s.imageOther = &m, other
	case link && (ext == "cls" || ext == "domain"):
		return key, fmt.Errorf("%s: sample %q: %q is a hard link; expected a regular file", w.archive, key, name)
	case ext == "cls" && !sparse:
		if s.hasLabel {
			return key, fmt.Errorf("%s: sample %q has two .cls labels; expected one", w.archive, key)
		}
		text, err := w.readText(tr, hdr, key)
		if err != nil {
			return key, err
		}
		s.label, s.hasLabel = text, true
	case ext == "domain" && !sparse:
		if s.hasDom {
			return key, fmt.Errorf("%s: sample %q has two .domain members; expected at most one", w.archive, key)
		}
		text, err := w.readText(tr, hdr, key)
		if err != nil {
			return key, err
		}
		s.domain, s.hasDom = text, true
	}
	return key, nil
}

// readText reads a small member, trimmed of white space.
func (w *walker) readText(tr *tar.Reader, hdr *tar.Header, key string) (string, error) {
	if hdr.Size > MaxText {
		return "", fmt.Errorf("%s: sample %q: %q is %d bytes; expected a label of at most %d",
			w.archive, key, hdr.Name, hdr.Size, MaxText)
	}
	b, err := io.ReadAll(io.LimitReader(tr, MaxText+1))
	if err != nil {
		return "", fmt.Errorf("%s: sample %q: reading %q: %w", w.archive, key, hdr.Name, err)
	}
	if len(b) > MaxText {
		return "", fmt.Errorf("%s: sample %q: %q is over %d bytes; expected a label of at most %d",
			w.archive, key, hdr.Name, MaxText, MaxText)
	}
	return strings.TrimSpace(string(b)), nil
}

// flush ends the current sample, handing it to fn if it has an image.
func (w *walker) flush() error {
	s := w.cur
	w.cur = nil
	if s != nil && s.image == nil && s.symlink != "" {
		// Its image's bytes are not in the archive: dropped unsaid, the
		// sample would just be missing.
		return fmt.Errorf("%s: sample %q: its image %q is a symbolic link to %q; archive the file it points to (tar -h, --dereference)",
			w.archive, s.key, s.symlink, s.symlinkTo)
	}
	if s == nil || s.image == nil {
		return nil
	}
	return w.fn(Sample{Key: s.key, Image: *s.image, Label: s.label, Domain: s.domain})
}

// isSparse reports whether hdr is a GNU sparse file, old style or PAX, whose
// data in the archive is not the file's bytes.
func isSparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}
