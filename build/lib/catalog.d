build/lib/catalog.o: lib/catalog.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
