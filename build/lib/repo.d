build/lib/repo.o: lib/repo.c lib/internal.h lib/imgdedup.h
lib/internal.h:
lib/imgdedup.h:
