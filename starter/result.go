package main

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"

	"dcd/activities"
	"dcd/internal/redact"
	"dcd/workflows"
)

// writeResult prints a pass's result table and where its files are.
func writeResult(w io.Writer, res workflows.PassResult, storageURL string) {
	fmt.Fprintf(w, "pass %s\n\n", res.RunID)
	rows := [][]string{{"method", "test acc", "E_heldout acc", "debug-train size", "selection precision", "wall time"}}
	for _, m := range res.Eval.Methods {
		prec := "-"
		if m.SelectionPrecision != nil {
			prec = fmt.Sprintf("%.3f", *m.SelectionPrecision)
		}
		rows = append(rows, []string{
			m.Method,
			fmt.Sprintf("%.3f", m.TestAccuracy),
			fmt.Sprintf("%.3f", m.HeldoutAccuracy),
			fmt.Sprint(m.DebugTrainSize),
			prec,
			fmt.Sprintf("%.1f s", m.WallSeconds),
		})
	}
	writeTable(w, rows)
	for _, m := range res.Eval.Methods {
		if m.Note != "" {
			fmt.Fprintf(w, "\n%s: %s\n", m.Method, m.Note)
		}
	}
	// A reject is an image not read, or read but not decoded.
	fmt.Fprintf(w, "\n%d test images, %d E_heldout images; %s rejected (not read or not decoded)",
		res.Eval.TestImages, res.Eval.HeldoutImages, count(res.Rejects, "pool image"))
	for _, set := range []struct{ ds, name string }{{activities.Train, "train"}, {activities.Test, "test"}, {activities.ErrorHeldout, "E_heldout"}} {
		if n := res.SetRejects[set.ds]; n > 0 {
			fmt.Fprintf(w, ", %s left out (not read or not decoded)", count(n, set.name+" image"))
		}
	}
	if res.Rejects > 0 || res.SetRejects[activities.Train] > 0 {
		// The pool's and train's rejects stay in their shards' cache
		// entries: after access to them is fixed, only -reread reads them.
		fmt.Fprint(w, "\n(rejects.csv says why; images that could not be read and now can are read again by `starter run -reread`;\n one that did not decode is decoded again when its version changes: a manifest's version column, a prefix's listing)")
	}
	fmt.Fprint(w, "\n\n")

	fmt.Fprintf(w, "storage %s\n", redact.URL(storageURL))
	files := [][]string{}
	// A path printed that is not on disk is marked: storage defaults to
	// .dcd/storage under the working directory, and starter run elsewhere
	// than the workers' checkout names files they never wrote there.
	missing := false
	at := func(p string) string {
		if _, err := os.Stat(p); err != nil {
			missing = true
			return p + " (not found)"
		}
		return p
	}
	for _, f := range []struct{ name, key string }{
		{"eval.json", res.EvalKey},
		{"report.html", res.ReportKey},
		{"rejects.csv", res.RejectsKey},
	} {
		if f.key == "" {
			continue
		}
		row := []string{"  " + f.name, f.key}
		if p, ok := localPath(storageURL, f.key); ok {
			row = append(row, at(p))
		}
		files = append(files, row)
	}
	for _, m := range res.Eval.Methods {
		if m.ModelError != "" {
			files = append(files, []string{"  " + m.Method + " model", "not exported: " + m.ModelError})
		}
		if m.Model == "" {
			continue
		}
		row := []string{"  " + m.Method + " model", m.Model}
		if p, ok := localPath(storageURL, m.Model); ok {
			row = append(row, at(p))
		}
		files = append(files, row)
	}
	writeColumns(w, files)
	if missing {
		fmt.Fprintf(w, "\nfiles not found: is %s the bucket the pass's workers wrote to? Give theirs with -storage URL (or DCD_STORAGE)\n", redact.URL(storageURL))
	}
}

// writeTable prints rows as columns separated by " | ", the first row
// followed by a rule.
func writeTable(w io.Writer, rows [][]string) {
	widths := columnWidths(rows)
	for i, r := range rows {
		fmt.Fprintln(w, strings.Join(padRow(r, widths), " | "))
		if i == 0 {
			rule := make([]string, len(r))
			for j := range r {
				rule[j] = strings.Repeat("-", widths[j])
			}
			fmt.Fprintln(w, strings.Join(rule, "-+-"))
		}
	}
}

// writeColumns prints rows as space-aligned columns.
func writeColumns(w io.Writer, rows [][]string) {
	widths := columnWidths(rows)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(padRow(r, widths), "  "))
	}
}

// padRow pads every cell but the last to its column's width.
func padRow(r []string, widths []int) []string {
	cells := make([]string, len(r))
	for j, c := range r {
		if j == len(r)-1 {
			cells[j] = c
		} else {
			cells[j] = pad(c, widths[j])
		}
	}
	return cells
}

func columnWidths(rows [][]string) []int {
	var widths []int
	for _, r := range rows {
		for j, c := range r {
			if j >= len(widths) {
				widths = append(widths, 0)
			}
			widths[j] = max(widths[j], len([]rune(c)))
		}
	}
	return widths
}

func pad(s string, n int) string {
	return s + strings.Repeat(" ", max(n-len([]rune(s)), 0))
}

// localPath is where key lies on disk when storage is a file:// bucket,
// as fileblob places it: prefix= is put before the key as it is (no "/"
// between), and file://./dir is dir under the working directory.
func localPath(storageURL, key string) (string, bool) {
	u, err := url.Parse(storageURL)
	if err != nil || u.Scheme != "file" {
		return "", false
	}
	dir := u.Path
	if u.Host == "." {
		dir = strings.TrimPrefix(dir, "/")
	}
	p, err := filepath.Abs(filepath.FromSlash(path.Join(dir, u.Query().Get("prefix")+key)))
	return p, err == nil
}

// count is n of a noun, in the plural but for one.
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
