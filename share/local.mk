# share/: installed under $(pkgdatadir).  Owners append to nobase_dist_pkgdata_DATA
# with paths relative to share/ by using the share/ prefix (see below).
recipesdir = $(pkgdatadir)/recipes
dist_recipes_SCRIPTS = share/recipes/demo.sh
