package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// train-head's spool reads every row once per pass: in the order written
// for full-batch passes, and for mini-batch epochs in a seeded shuffle
// of chunks and of the rows in each, which moves the debug-train rows,
// written last, from the epoch's end.
func TestSpoolShuffles(t *testing.T) {
	const rows, debug = 3*spoolChunk + 100, spoolChunk
	f, err := os.Create(filepath.Join(t.TempDir(), "spool.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := &spoolRows{f: f, name: f.Name(), dim: 2, rows: rows}
	w := bufio.NewWriter(f)
	for i := range rows {
		weight := float32(1)
		if i >= rows-debug {
			weight = 5
		}
		if err := s.write(w, []float32{float32(i), -float32(i)}, i%7, weight); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}

	read := func(each func(func([]float32, int, float32) error) error) (ids []int, debugEarly int) {
		err := each(func(x []float32, label int, weight float32) error {
			id := int(x[0])
			if x[1] != -x[0] || label != id%7 {
				t.Fatalf("row %d read as %v, label %d", id, x, label)
			}
			if weight == 5 && len(ids) < rows/2 {
				debugEarly++
			}
			ids = append(ids, id)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return ids, debugEarly
	}
	inOrder, _ := read(s.Each)
	if !slices.IsSorted(inOrder) || len(inOrder) != rows {
		t.Fatalf("Each read %d rows, sorted %v; want %d in order", len(inOrder), slices.IsSorted(inOrder), rows)
	}
	shuffled := func(seed uint64) func(func([]float32, int, float32) error) error {
		return func(fn func([]float32, int, float32) error) error { return s.EachShuffled(seed, fn) }
	}
	a, early := read(shuffled(1))
	b, _ := read(shuffled(1))
	c, _ := read(shuffled(2))
	if !slices.Equal(a, b) || slices.Equal(a, c) || slices.Equal(a, inOrder) {
		t.Errorf("shuffles: same seed same order %v, another seed another %v, not the written order %v",
			slices.Equal(a, b), !slices.Equal(a, c), !slices.Equal(a, inOrder))
	}
	if got := slices.Sorted(slices.Values(a)); !slices.Equal(got, inOrder) {
		t.Errorf("a shuffled pass does not read every row once")
	}
	// Chunks move as files do in a pass's own fit: seed 1 moves the
	// debug rows' to the front.
	if early == 0 {
		t.Errorf("no debug-train row in the first half of a shuffled pass: the epoch still ends on them")
	}
}
