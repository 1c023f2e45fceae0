package dataset

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"dcd/internal/store"
	"dcd/internal/store/storetest"
	"dcd/schemas"
)

// walkMarks walks ds from at, returning the items and the marks after each.
func walkMarks(t *testing.T, s Source, ds schemas.Dataset, at Mark) ([]Item, []Mark, error) {
	t.Helper()
	var items []Item
	var marks []Mark
	err := s.WalkFrom(context.Background(), ds, &at, func(it Item) error {
		items = append(items, it)
		marks = append(marks, at)
		return nil
	})
	return items, marks, err
}

// A walk goes on from the mark after any item as the whole walk went on
// from there: the same items, IDs and versions, and the same marks after
// them. On an object store (mem://, and one that refuses a read from an
// object's end, as S3 does) and a folder (file://); over labels
// whose keys sort apart from their folders' names, archives of several
// samples, a CSV manifest with a byte-order mark and a label quoted across
// lines, and a Parquet manifest of several row groups.
func TestWalkFrom(t *testing.T) {
	files := map[string]string{}
	for _, label := range []string{"a", "a b", "a-c", "dog"} {
		for i := range 3 {
			files[fmt.Sprintf("folders/%s/%d.png", label, i)] = "x"
		}
	}
	files["folders/a/nested/skipped.png"] = "x"
	var uris, labels []string
	for i := range 10 {
		uris, labels = append(uris, fmt.Sprintf("img/%d.png", i)), append(labels, fmt.Sprint(i%3))
	}
	files["man.parquet"] = string(parquetManifest(t, uris, labels, nil, nil, 3))
	files["man.csv"] = "\ufeffuri,label\n/a.png,cat\n/b.png,\"two\nlines\"\n\n/c.png,dog\n/d.png,cat\r\n/e.png,cat\n"
	for i, n := range []int{3, 1, 4} {
		var members []string
		for j := range n {
			members = append(members, fmt.Sprintf("%d.png", j), "image", fmt.Sprintf("%d.cls", j), "cat")
		}
		files[fmt.Sprintf("wds/%02d.tar", i)] = tarOf(t, members...)
	}
	sets := map[string]schemas.Dataset{
		"prefix":     {Prefix: "folders"},
		"webdataset": {WebDataset: "wds/"},
		"csv":        {Manifest: "man.csv"},
		"parquet":    {Manifest: "man.parquet"},
	}
	ctx := context.Background()
	for _, url := range []string{"mem://", "file://" + t.TempDir(), "hooked"} {
		b, err := store.Open(ctx, strings.Replace(url, "hooked", "mem://", 1))
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		if url == "hooked" {
			b = storetest.Hooked(b, &storetest.Hooks{})
		}
		for k, v := range files {
			if err := b.WriteAll(ctx, k, []byte(v), nil); err != nil {
				t.Fatal(err)
			}
		}
		src := Source{Bucket: b}
		for name, ds := range sets {
			items, marks, err := walkMarks(t, src, ds, Mark{})
			if err != nil {
				t.Fatalf("%s %s: %v", url, name, err)
			}
			if len(items) < 5 {
				t.Fatalf("%s %s: walked %d items, want the dataset's", url, name, len(items))
			}
			for i, m := range marks {
				got, gotMarks, err := walkMarks(t, src, ds, m)
				if err != nil {
					t.Fatalf("%s %s, from the mark after item %d (%+v): %v", url, name, i, m, err)
				}
				if !reflect.DeepEqual(got, items[i+1:]) && len(got)+len(items[i+1:]) > 0 {
					t.Errorf("%s %s, from the mark after item %d (%+v): walked\n%+v\nwant\n%+v", url, name, i, m, got, items[i+1:])
				}
				if !reflect.DeepEqual(gotMarks, marks[i+1:]) && len(gotMarks)+len(marks[i+1:]) > 0 {
					t.Errorf("%s %s, from the mark after item %d: marks\n%+v\nwant\n%+v", url, name, i, gotMarks, marks[i+1:])
				}
			}
		}
	}
}

// From a mark, a CSV manifest's errors name the file's own line; a
// manifest changed since the mark was taken is ErrChanged.
func TestWalkFromManifestErrors(t *testing.T) {
	b := memBucket(t, map[string]string{
		"bad.csv":   "uri,label\n/a.png,cat\n/b.png,\"two\nlines\"\n../c.png,dog\n",
		"short.csv": "uri,label\n/a.png,cat\n/b.png,cat\n/c.png\n",
	})
	src := Source{Bucket: b}
	for _, c := range []struct{ manifest, want string }{
		{"bad.csv", "line 5"},
		{"short.csv", "line 4"},
	} {
		ds := schemas.Dataset{Manifest: c.manifest}
		_, marks, err := walkMarks(t, src, ds, Mark{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Fatalf("%s: walk: %v, want an error naming %s", c.manifest, err, c.want)
		}
		_, _, err = walkMarks(t, src, ds, marks[0])
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: from the mark after item 0: %v, want an error naming %s", c.manifest, err, c.want)
		}
	}

	for _, name := range []string{"m.csv", "m.parquet"} {
		data := "uri,label\n/a.png,cat\n/b.png,cat\n/c.png,cat\n"
		again := data + "/d.png,cat\n"
		if name == "m.parquet" {
			data = string(parquetManifest(t, []string{"a", "b", "c"}, []string{"x", "y", "z"}, nil, nil, 2))
			again = string(parquetManifest(t, []string{"a", "b", "c", "d"}, []string{"x", "y", "z", "w"}, nil, nil, 2))
		}
		ctx := context.Background()
		b.WriteAll(ctx, name, []byte(data), nil)
		ds := schemas.Dataset{Manifest: name}
		_, marks, err := walkMarks(t, src, ds, Mark{})
		if err != nil {
			t.Fatal(err)
		}
		b.WriteAll(ctx, name, []byte(again), nil)
		if _, _, err := walkMarks(t, src, ds, marks[1]); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), name) {
			t.Errorf("%s changed since the mark: %v, want ErrChanged naming it", name, err)
		}
	}

	// A WebDataset archive rewritten since the mark in it was taken: the
	// mark's sample count means nothing in its new samples.
	ctx := context.Background()
	b.WriteAll(ctx, "w/00.tar", []byte(tarOf(t, "0.png", "image", "0.cls", "cat", "1.png", "image", "1.cls", "cat")), nil)
	ds := schemas.Dataset{WebDataset: "w/"}
	_, marks, err := walkMarks(t, src, ds, Mark{})
	if err != nil {
		t.Fatal(err)
	}
	b.WriteAll(ctx, "w/00.tar", []byte(tarOf(t, "5.png", "image", "5.cls", "dog", "0.png", "image", "0.cls", "cat", "1.png", "image", "1.cls", "cat")), nil)
	if _, _, err := walkMarks(t, src, ds, marks[0]); !errors.Is(err, ErrChanged) || !strings.Contains(err.Error(), "w/00.tar") {
		t.Errorf("an archive rewritten since the mark: %v, want ErrChanged naming it", err)
	}
}
