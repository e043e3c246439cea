# gnuplot -e "tsv='chart.tsv'; out='overhead.png'" chart.gp
# chart.tsv (written by summarize.py): target cpu_1k cpu_64k rps_1k rps_64k  (medians; NaN = none)
set terminal pngcairo size 1100,420 font ",10"
set output out
set datafile missing "NaN"
set multiplot layout 1,2 title "Sidecar proxy overhead (bench/proxy.sh, layout A, medians)"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set key top left
set grid ytics
set yrange [0:*]
set title "Proxy CPU per request (lower is better)"
set ylabel "µs / request"
plot tsv using 2:xtic(1) title "1 KiB", '' using 3 title "64 KiB"
set title "Throughput, 64 connections, proxy + backend on one core (higher is better)"
set ylabel "requests / s"
plot tsv using 4:xtic(1) title "1 KiB", '' using 5 title "64 KiB"
unset multiplot
