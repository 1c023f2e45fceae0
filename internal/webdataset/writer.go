package webdataset

import (
	"archive/tar"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
)

// Writer writes samples as one tar archive in the layout [Walk] reads: an
// image member, its .cls label and an optional .domain, consecutive.
type Writer struct {
	tw   *tar.Writer
	keys map[string]bool
}

// NewWriter writes an archive to w; Close finishes it.
func NewWriter(w io.Writer) *Writer {
	return &Writer{tw: tar.NewWriter(w), keys: map[string]bool{}}
}

// modTime is every member's modification time: an archive's bytes depend
// on its samples only, so packing the same images twice gives the same
// archive.
var modTime = time.Unix(0, 0)

// Write appends a sample: key (a path whose base name has no '.'), the
// image's extension (one [Walk] takes for an image: jpg, jpeg, png, gif,
// bmp or webp), its bytes, its label and its domain ("" for none). Labels
// and domains are read back trimmed of white space, so they must have none
// at either end, and a label must not be empty.
func (w *Writer) Write(key, ext string, image []byte, label, domain string) error {
	base := path.Base(key)
	switch {
	case key == "" || strings.Contains(base, ".") || strings.HasSuffix(key, "/"):
		return fmt.Errorf("webdataset: sample key %q: want a name without '.' in its base name", key)
	case strings.Contains(key, "#"):
		return fmt.Errorf("webdataset: sample key %q: '#' separates archive and member in image keys", key)
	case len(key)+len(".domain") > maxName:
		return fmt.Errorf("webdataset: sample key of %d bytes: its members' names would pass the %d a walk takes", len(key), maxName)
	case w.keys[key]:
		return fmt.Errorf("webdataset: sample key %q written twice", key)
	case !imageExts[ext]:
		return fmt.Errorf("webdataset: sample %q: image extension %q is none of jpg, jpeg, jfif, png, gif, bmp, webp", key, ext)
	case label == "" || strings.TrimSpace(label) != label:
		return fmt.Errorf("webdataset: sample %q: label %q: want a non-empty label without leading or trailing white space", key, label)
	case strings.TrimSpace(domain) != domain:
		return fmt.Errorf("webdataset: sample %q: domain %q has leading or trailing white space", key, domain)
	case len(label) > MaxText || len(domain) > MaxText:
		return fmt.Errorf("webdataset: sample %q: label or domain over %d bytes", key, MaxText)
	}
	w.keys[key] = true
	members := []struct {
		ext  string
		data []byte
	}{{ext, image}, {"cls", []byte(label)}, {"domain", []byte(domain)}}
	if domain == "" {
		members = members[:2]
	}
	for _, m := range members {
		name := key + "." + m.ext
		hdr := &tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(m.data)), ModTime: modTime}
		if err := w.tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("webdataset: write %q: %w", name, err)
		}
		if _, err := w.tw.Write(m.data); err != nil {
			return fmt.Errorf("webdataset: write %q: %w", name, err)
		}
	}
	return nil
}

// Close writes the archive's end; it does not close the underlying writer.
func (w *Writer) Close() error {
	if err := w.tw.Close(); err != nil {
		return fmt.Errorf("webdataset: finish archive: %w", err)
	}
	return nil
}
