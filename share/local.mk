# share/: installed under $(pkgdatadir).  Owners append to nobase_dist_pkgdata_DATA
# with paths relative to share/ by using the share/ prefix (see below).
