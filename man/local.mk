# man/: hand-written mdoc pages.  Owners append their pages to MAN_PAGES in
# their own fragments (MAN_PAGES += man/moe-x.1).
MAN_PAGES += man/moe.7
